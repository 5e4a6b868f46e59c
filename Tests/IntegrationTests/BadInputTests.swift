import Glibc
import SwiftVisor
import SwiftVisorGuests
import Testing
import VisorKVM

extension KVMIntegration {
    /// Bad configurations through the Swift API: each is a typed error with a message, and no
    /// file descriptor or mapping is left behind.
    @Suite("Bad input to Machine")
    struct BadInputTests {
        /// Builds a machine that must fail, and checks that no descriptor leaked.
        func failure(_ configure: (inout MachineConfiguration) -> Void) -> MachineError? {
            var config = MachineConfiguration(guest: .elf(GuestImages.hello))
            config.consoleOutput = { _ in }
            configure(&config)
            // The process's one /dev/kvm stays open once any machine opened it (KVMSystem.shared).
            _ = try? KVMSystem.shared()
            let before = openFileDescriptorCount()
            // At most as many: unit tests of other suites run in this process at the same
            // time and may close descriptors of their own meanwhile; a leak only adds.
            defer { #expect(openFileDescriptorCount() <= before, "a failed Machine left descriptors open") }
            do {
                _ = try Machine(config)
                return nil
            } catch {
                return error
            }
        }

        @Test("a missing KVM device names the path and says KVM is unavailable")
        func missingDevice() throws {
            let error = try #require(failure { $0.kvmPath = "/nonexistent/kvm" })
            guard case .kvm(.cannotOpenDevice(let path, let code)) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(path == "/nonexistent/kvm")
            #expect(code == ENOENT)
            #expect(error.description.contains("KVM is not available"))
        }

        @Test("a device node that is not KVM is refused")
        func notKVM() throws {
            let error = try #require(failure { $0.kvmPath = "/dev/null" })
            guard case .kvm(.ioctl(let name, _)) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(name == "KVM_GET_API_VERSION")
        }

        @Test("only KVM API version 12 is accepted")
        func apiVersion() {
            #expect(throws: Never.self) { try KVMSystem.checkAPIVersion(12) }
            #expect(throws: KVMError.unsupportedAPIVersion(11)) { try KVMSystem.checkAPIVersion(11) }
            #expect(KVMError.unsupportedAPIVersion(13).description.contains("needs version 12"))
        }

        @Test(
            "memory sizes that are zero, unaligned or beyond the host are refused",
            arguments: [UInt64(0), 4097, 1000, 1 << 50])
        func badMemorySize(size: UInt64) throws {
            let error = try #require(failure { $0.memorySize = size })
            guard case .invalidMemorySize = error else {
                Issue.record("unexpected \(error)")
                return
            }
        }

        @Test("a file that is not ELF is refused with a hint about --load-address")
        func notELF() throws {
            let error = try #require(failure { $0.guest = .elf(Array("just some text\n".utf8)) })
            guard case .loader(.notELF) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(error.description.contains("--load-address"))
        }

        @Test("an ELF for another class or machine is refused")
        func wrongELF() throws {
            var class32 = GuestImages.hello
            class32[4] = 1
            #expect({ if case .loader(.wrongClass(1)) = failure({ $0.guest = .elf(class32) }) { true } else { false } }())
            var arm = GuestImages.hello
            arm[18] = 183  // EM_AARCH64
            arm[19] = 0
            #expect({ if case .loader(.wrongMachine(183)) = failure({ $0.guest = .elf(arm) }) { true } else { false } }())
        }

        @Test("segments outside RAM are refused")
        func segmentOutsideRAM() throws {
            // The guests load at 1 MiB; with 1 MiB of RAM there is no room for them.
            let error = try #require(failure { $0.memorySize = 1 << 20 })
            guard case .loader(.segmentOutsideRAM) = error else {
                Issue.record("unexpected \(error)")
                return
            }
        }

        @Test("segments over the VMM's reserved first MiB are refused")
        func segmentOverReservedArea() throws {
            // Move the one PT_LOAD segment (and the entry) down to 0x80000.
            var image = GuestImages.hello
            let phoff = Int(image[32]) | Int(image[33]) << 8
            for field in [phoff + 16, phoff + 24] {  // p_vaddr, p_paddr
                image[field + 2] = 0x08
                image[field + 3] = 0x00
            }
            image[24 + 2] = 0x08  // e_entry
            let error = try #require(failure { $0.guest = .elf(image) })
            guard case .loader(.segmentOverlapsReserved) = error else {
                Issue.record("unexpected \(error)")
                return
            }
        }

        @Test("real-mode load addresses must be aligned and below 1 MiB")
        func badLoadAddress() throws {
            for address: UInt64 in [0x7C01, 0x100000] {
                let error = try #require(failure { $0.guest = .flat(GuestImages.realMode, loadAddress: address) })
                guard case .loader(.loadAddressInvalid) = error else {
                    Issue.record("unexpected \(error)")
                    return
                }
            }
        }

        @Test("fifty machines built and run in one process leave no descriptors behind")
        func noLeaks() throws {
            let before = openFileDescriptorCount()
            for _ in 0..<50 {
                var config = MachineConfiguration(guest: .elf(GuestImages.exitStatus))
                config.commandLine = "5"
                let report = try Machine(config).run()
                #expect(report.exitStatus == 5)
            }
            #expect(openFileDescriptorCount() == before)
        }
    }
}
