// Snapshot state as a restore reads it: the state file's container and each section's
// contents, decoded by the type that owns it.
import SwiftVisor
import VisorDevices
import VisorSnapshot

/// The first byte picks what the rest is: 0, a whole state file (`SnapshotFile`); 1, the
/// saved machine configuration; 2-8, the state of COM1, the i8042, the CMOS/RTC, PM1, the
/// reset register, PCI's CONFIG_ADDRESS or the POST-code port, restored into a new device.
/// (Section contents are fuzzed directly: random bytes rarely pass a file's checksums.)
///
/// Checks: whatever is accepted is canonical, so a restore never reads a value it would not
/// write: the file re-encodes to the same bytes, and each decoded or restored state saves
/// exactly the bytes it was read from. A refused input leaves a device as it was.
func fuzzSnapshotState(_ data: [UInt8]) {
    guard let selector = data.first else { return }
    let body = Array(data.dropFirst())
    switch selector % 9 {
    case 0:
        guard let file = try? SnapshotFile(decoding: body) else { return }
        precondition(file.encoded() == body, "snapshot-state: an accepted file re-encodes differently")
    case 1:
        var reader = SnapshotReader(body)
        guard let shape = try? SavedMachineShape(from: &reader), reader.isAtEnd else { return }
        var writer = SnapshotWriter()
        shape.encode(to: &writer)
        precondition(writer.bytes == body, "snapshot-state: an accepted machine configuration re-encodes differently")
    default:
        let devices: [any SnapshotStateful] = [
            Serial16550Device(output: { _ in }, interruptLine: { _ in }), I8042Device(interruptLine: { _, _ in }),
            CMOSDevice(clock: { 1_700_000_000 }), PM1Device(), ResetControlDevice(), PCIConfigDevice(),
            PostCodeDevice(),
        ]
        let device = devices[Int(selector % 9) - 2]
        var before = SnapshotWriter()
        device.saveState(to: &before)
        var reader = SnapshotReader(body)
        do {
            try device.restoreState(from: &reader)
        } catch {
            var after = SnapshotWriter()
            device.saveState(to: &after)
            precondition(after.bytes == before.bytes, "snapshot-state: a refused restore changed the device")
            return
        }
        guard reader.isAtEnd else { return }
        var after = SnapshotWriter()
        device.saveState(to: &after)
        precondition(after.bytes == body, "snapshot-state: a restored device saves different bytes")
    }
}
