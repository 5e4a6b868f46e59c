import VisorKVM
import VisorMemory

extension Machine {
    /// The pages of guest RAM written since the machine was built or since the last call,
    /// and clears them: one bitmap per region of `memory.regions`, bit `p % 64` of word
    /// `p / 64` for page `p` of the region. It joins the guest's writes (KVM's dirty log of
    /// each memory slot) and the VMM's own (guest memory's bitmap), and is what
    /// `GuestMemory.writeDiffMemoryFile(to:dirtyPages:)` takes.
    ///
    /// Call it with the machine paused (or stopped) for a set that matches memory; a
    /// running guest's later writes land in the next call's set.
    ///
    /// - Throws: `MachineError.kvm` when the machine was built without
    ///   `MachineConfiguration.trackDirtyPages`, or KVM refuses the log.
    public func dirtyPages() throws(MachineError) -> [[UInt64]] {
        var logged: [[UInt64]] = []
        do throws(KVMError) {
            for (slot, region) in memory.regions.enumerated() {
                logged.append(try parts.vm.dirtyLog(slot: UInt32(slot), pageCount: region.size / GuestMemory.pageSize))
            }
        } catch {
            throw .kvm(error)
        }
        return GuestMemory.union(logged, memory.takeDirtyPages())
    }
}
