public import VisorCore
public import VisorSnapshot
import Synchronization

// A register-level model of the PC keyboard controller (Intel 8042 and compatibles) with a
// keyboard on its first port and nothing plugged into its second (AUX, mouse) port.
//
// The model is pure state: it knows the data register (port 0x60) and the status/command
// register (port 0x64) as two pairs of read/write functions, and nothing about ports,
// buses or threads. `I8042Device` puts it on the port bus.
//
// What Linux 6.1's i8042 and atkbd drivers see, and why each answer is what it is:
// - `i8042_controller_check` empties the output buffer (at most 16 bytes), so the queue
//   holds at most `queueCapacity` (16) bytes.
// - `i8042_controller_init` reads the command byte twice and wants the same value, then
//   checks the status register's keylock bit (bit 4, 1 = not inhibited): it is always 1
//   here, so there is no "Keylock active" warning.
// - `i8042_check_aux` sends 0xD3 (write the AUX output buffer) and expects the byte back
//   with the AUX bit set; then it toggles the AUX port with 0xA7/0xA8 and reads the command
//   byte to see bit 5 follow; then it enables IRQ 12 and sends 0xD3 again, waiting up to
//   250 ms for the interrupt. With `interruptLine` wired to IRQ 12 the AUX port is found;
//   without it the driver gives up after 250 ms and carries on without AUX.
// - `i8042_check_mux` sends 0xD3 three times and treats an echo of the third byte as "no
//   active multiplexer": the echo is exactly what this model does.
// - Commands the driver sends to a device through 0xD4 (write to AUX device) find no device:
//   the controller answers 0xFE with the timeout bit, as real controllers do, so psmouse's
//   probe fails at once instead of waiting for a reply.
// - atkbd sends 0xF2 (identify) and expects 0xFA, then 0xAB and a second ID byte. With
//   translation on (command byte bit 6, the default) a real controller turns the keyboard's
//   0x83 into 0x41, and so does this one.
//
// Deliberate simplifications, invisible to such a driver:
// - IBF (status bit 1) is always 0: every write is handled at once.
// - The keyboard answers commands whether or not the command byte disables its port.
// - There is no host keyboard input: the keyboard only answers commands.
// - Translation applies only to bytes this keyboard can send (0x01-0x03 from the scan-set
//   query, 0x83 and 0x84); every other byte it sends is the same in both modes.
// - Unknown controller commands are ignored and produce no output.

/// An 8042 keyboard controller with a keyboard and an empty AUX port, modelled register by
/// register. It knows the data register and the status/command register, not ports or buses.
package struct I8042: Sendable {
    /// Bytes the output queue holds; further bytes are dropped. (Linux flushes at most 16.)
    package static let queueCapacity = 16

    /// The command byte at power-on: translation, system flag, keyboard interrupt on, AUX
    /// port disabled (0x65).
    package static let initialCommandByte: UInt8 = ctrTranslate | ctrSystemFlag | ctrKeyboardInterrupt | ctrAuxDisable

    // MARK: Status register bits (read from port 0x64)

    /// Output buffer full: a byte is waiting at port 0x60.
    package static let statusOutputFull: UInt8 = 0x01
    /// Input buffer full: never set here.
    package static let statusInputFull: UInt8 = 0x02
    /// System flag: mirrors command byte bit 2.
    package static let statusSystemFlag: UInt8 = 0x04
    /// Set when the last write went to port 0x64 (a command), clear after a write to 0x60.
    package static let statusCommandData: UInt8 = 0x08
    /// Keyboard not inhibited (the keylock switch): always set.
    package static let statusNotInhibited: UInt8 = 0x10
    /// The waiting byte came from the AUX port.
    package static let statusAuxData: UInt8 = 0x20
    /// The waiting byte reports a timeout (sent to a device that is not there).
    package static let statusTimeout: UInt8 = 0x40

    // MARK: Command byte bits

    /// Raise IRQ 1 when a keyboard or controller byte is waiting.
    package static let ctrKeyboardInterrupt: UInt8 = 0x01
    /// Raise IRQ 12 when an AUX byte is waiting.
    package static let ctrAuxInterrupt: UInt8 = 0x02
    /// System flag, reported in status bit 2.
    package static let ctrSystemFlag: UInt8 = 0x04
    /// Keyboard port disabled.
    package static let ctrKeyboardDisable: UInt8 = 0x10
    /// AUX port disabled.
    package static let ctrAuxDisable: UInt8 = 0x20
    /// Translate the keyboard's scan-code set 2 into set 1.
    package static let ctrTranslate: UInt8 = 0x40

    // MARK: Output port bits (command 0xD0 / 0xD1)

    /// Output port bit 0: the CPU reset line, active low. Writing it as 0 resets the machine.
    package static let outputPortResetLine: UInt8 = 0x01
    /// Output port bit 1: the A20 gate (recorded, no effect).
    package static let outputPortA20: UInt8 = 0x02
    /// Output port bit 4: keyboard output buffer full (read-only, computed).
    package static let outputPortKeyboardFull: UInt8 = 0x10
    /// Output port bit 5: AUX output buffer full (read-only, computed).
    package static let outputPortAuxFull: UInt8 = 0x20

    /// The ID the keyboard reports after 0xFA for command 0xF2, untranslated.
    package static let keyboardID: (UInt8, UInt8) = (0xAB, 0x83)
    /// The typematic setting after keyboard reset: 10.9 characters/s, 500 ms delay.
    package static let defaultTypematic: UInt8 = 0x2B

    /// Why the guest asked for a reset.
    package enum ResetRequest: Sendable, Equatable {
        /// A pulse command (0xF0-0xFF with bit 0 clear, typically 0xFE) pulsed the reset line.
        case pulseCommand
        /// Command 0xD1 wrote the output port with bit 0 (the reset line) clear.
        case outputPortWrite
    }

    /// One byte in the output queue and where it came from.
    private struct Output: Sendable {
        var byte: UInt8
        var aux: Bool
        var timeout: Bool
    }

    /// What the next write to port 0x60 is for, after a controller command that takes a parameter.
    private enum Parameter: Sendable, Equatable {
        /// 0x60-0x7F: write internal RAM byte `index` (0 is the command byte).
        case ram(index: Int)
        /// 0xD1: write the output port.
        case outputPort
        /// 0xD2: put the byte in the output queue as if the keyboard sent it.
        case keyboardOutput
        /// 0xD3: put the byte in the output queue as if the AUX device sent it.
        case auxOutput
        /// 0xD4: send the byte to the AUX device.
        case auxDevice
    }

    // MARK: State

    /// The controller's 32 bytes of internal RAM; byte 0 is the command byte.
    private var ram: [UInt8]
    /// Output queue storage, used as a ring buffer of `queueCapacity` entries.
    private var queue: [Output]
    private var queueHead = 0
    private var queueCount = 0
    /// The byte last read from port 0x60, returned again when the queue is empty.
    package private(set) var lastData: UInt8 = 0
    /// The parameter the controller waits for, if any.
    private var pendingParameter: Parameter?
    /// True after a write to port 0x64, false after a write to port 0x60.
    private var lastWriteWasCommand = false
    /// The output port as last written (bits 4 and 5 are computed on read).
    private var outputPortLatch: UInt8 = outputPortResetLine | outputPortA20

    /// The keyboard command waiting for its parameter byte (0xED, 0xF0 or 0xF3).
    private var keyboardPendingCommand: UInt8?
    /// The last byte the keyboard sent (before translation), for its resend command 0xFE.
    private var keyboardLastSent: UInt8 = 0xFA
    /// True while the keyboard is enabled (0xF4), false after 0xF5.
    package private(set) var keyboardScanning = true
    /// The LED state last set with 0xED (bit 0 scroll, 1 num, 2 caps lock).
    package private(set) var keyboardLEDs: UInt8 = 0
    /// The scan-code set (1, 2 or 3) last set with 0xF0.
    package private(set) var keyboardScanSet: UInt8 = 2
    /// The typematic rate and delay last set with 0xF3.
    package private(set) var keyboardTypematic: UInt8 = defaultTypematic

    /// A controller at power-on: command byte 0x65, output port 0x03, empty queue, and a
    /// keyboard in its reset state.
    package init() {
        ram = [UInt8](repeating: 0, count: 32)
        ram[0] = Self.initialCommandByte
        queue = [Output](repeating: Output(byte: 0, aux: false, timeout: false), count: Self.queueCapacity)
    }

    // MARK: Snapshot

    /// Appends the controller's RAM, its output queue (oldest first), its pending parameter
    /// and output port, and the keyboard's state.
    package func saveState(to writer: inout SnapshotWriter) {
        writer.write(bytes: ram)
        writer.write(UInt8(queueCount))
        for i in 0..<queueCount {
            let entry = queue[(queueHead + i) % Self.queueCapacity]
            writer.write(entry.byte)
            writer.write(entry.aux)
            writer.write(entry.timeout)
        }
        writer.write(lastData)
        switch pendingParameter {
        case nil: writer.write(UInt8(0))
        case .ram(let index): writer.write(UInt8(1)); writer.write(UInt8(index))
        case .outputPort: writer.write(UInt8(2))
        case .keyboardOutput: writer.write(UInt8(3))
        case .auxOutput: writer.write(UInt8(4))
        case .auxDevice: writer.write(UInt8(5))
        }
        writer.write(lastWriteWasCommand)
        writer.write(outputPortLatch)
        writer.write(optional: keyboardPendingCommand)
        writer.write(keyboardLastSent)
        writer.write(keyboardScanning)
        writer.write(keyboardLEDs)
        writer.write(keyboardScanSet)
        writer.write(keyboardTypematic)
    }

    /// The controller that `saveState` saved; every value must be one the model can hold.
    package init(restoring reader: inout SnapshotReader) throws(SnapshotError) {
        self.init()
        ram = try reader.readBytes("the i8042 RAM", exactly: 32)
        let count = Int(try reader.readUInt8("the i8042 output queue's length"))
        guard count <= Self.queueCapacity else {
            throw .invalid("the i8042 output queue", reason: "holds \(count) bytes, more than \(Self.queueCapacity)")
        }
        for i in 0..<count {
            queue[i] = Output(
                byte: try reader.readUInt8("an i8042 output byte"), aux: try reader.readBool("an i8042 output's port"),
                timeout: try reader.readBool("an i8042 output's timeout flag"))
        }
        queueCount = count
        lastData = try reader.readUInt8("the i8042's last data byte")
        switch try reader.readUInt8("the i8042's pending parameter") {
        case 0: pendingParameter = nil
        case 1: pendingParameter = .ram(index: Int(try reader.readUInt8("the i8042 RAM index", allowedBits: 0x1F)))
        case 2: pendingParameter = .outputPort
        case 3: pendingParameter = .keyboardOutput
        case 4: pendingParameter = .auxOutput
        case 5: pendingParameter = .auxDevice
        case let other: throw .invalid("the i8042's pending parameter", reason: "is \(other), not 0 to 5")
        }
        lastWriteWasCommand = try reader.readBool("the i8042's last write port")
        outputPortLatch = try reader.readUInt8("the i8042 output port")
        keyboardPendingCommand = try reader.readOptionalUInt8("the keyboard's pending command")
        if let command = keyboardPendingCommand, ![0xED, 0xF0, 0xF3].contains(command) {
            throw .invalid(
                "the keyboard's pending command", reason: "is 0x\(String(command, radix: 16)), which takes no parameter")
        }
        keyboardLastSent = try reader.readUInt8("the keyboard's last byte")
        keyboardScanning = try reader.readBool("whether the keyboard scans")
        keyboardLEDs = try reader.readUInt8("the keyboard LEDs", allowedBits: 0x07)
        keyboardScanSet = try reader.readUInt8("the keyboard's scan-code set")
        guard (1...3).contains(keyboardScanSet) else {
            throw .invalid("the keyboard's scan-code set", reason: "is \(keyboardScanSet), not 1, 2 or 3")
        }
        keyboardTypematic = try reader.readUInt8("the keyboard's typematic rate")
    }

    // MARK: Read-only views (no side effects)

    /// The command byte (internal RAM byte 0).
    package var commandByte: UInt8 { ram[0] }

    /// The number of bytes waiting in the output queue.
    package var outputCount: Int { queueCount }

    /// The status register as a read of port 0x64 returns it (reading it has no side effects).
    package var status: UInt8 {
        var value = Self.statusNotInhibited
        if commandByte & Self.ctrSystemFlag != 0 { value |= Self.statusSystemFlag }
        if lastWriteWasCommand { value |= Self.statusCommandData }
        if let head {
            value |= Self.statusOutputFull
            if head.aux { value |= Self.statusAuxData }
            if head.timeout { value |= Self.statusTimeout }
        }
        return value
    }

    /// The output port as command 0xD0 reports it.
    package var outputPort: UInt8 {
        var value = outputPortLatch & ~(Self.outputPortKeyboardFull | Self.outputPortAuxFull)
        if let head {
            value |= head.aux ? Self.outputPortAuxFull : Self.outputPortKeyboardFull
        }
        return value
    }

    /// IRQ 1's level: a keyboard or controller byte waits and the command byte enables IRQ 1.
    package var keyboardInterruptLevel: Bool {
        guard let head, !head.aux else { return false }
        return commandByte & Self.ctrKeyboardInterrupt != 0
    }

    /// IRQ 12's level: an AUX byte waits and the command byte enables IRQ 12.
    package var auxInterruptLevel: Bool {
        guard let head, head.aux else { return false }
        return commandByte & Self.ctrAuxInterrupt != 0
    }

    private var head: Output? { queueCount > 0 ? queue[queueHead] : nil }

    // MARK: Guest access

    /// A read of port 0x60: the oldest waiting byte, which leaves the queue. With nothing
    /// waiting, the byte read last time is returned again, as the chip's output buffer keeps it.
    package mutating func readData() -> UInt8 {
        guard queueCount > 0 else { return lastData }
        let byte = queue[queueHead].byte
        queueHead += 1
        if queueHead == Self.queueCapacity { queueHead = 0 }
        queueCount -= 1
        lastData = byte
        return byte
    }

    /// A read of port 0x64: the status register.
    package func readStatus() -> UInt8 { status }

    /// A write of port 0x60: the parameter of a pending controller command, or else a byte
    /// for the keyboard. Returns a reset request when the byte writes the output port with
    /// the reset line low.
    package mutating func writeData(_ value: UInt8) -> ResetRequest? {
        lastWriteWasCommand = false
        guard let parameter = pendingParameter else {
            keyboardReceive(value)
            return nil
        }
        pendingParameter = nil
        switch parameter {
        case .ram(let index):
            ram[index] = value
        case .outputPort:
            outputPortLatch = value
            if value & Self.outputPortResetLine == 0 { return .outputPortWrite }
        case .keyboardOutput:
            push(value, aux: false)
        case .auxOutput:
            push(value, aux: true)
        case .auxDevice:
            // Nothing is plugged into the AUX port: the controller reports a timeout.
            push(0xFE, aux: true, timeout: true)
        }
        return nil
    }

    /// A write of port 0x64: a controller command. Returns a reset request for a pulse of
    /// the reset line (0xFE, or any 0xF0-0xFF with bit 0 clear).
    package mutating func writeCommand(_ command: UInt8) -> ResetRequest? {
        lastWriteWasCommand = true
        pendingParameter = nil
        switch command {
        case 0x20...0x3F:
            // Read internal RAM; 0x20 reads the command byte.
            push(ram[Int(command & 0x1F)], aux: false)
        case 0x60...0x7F:
            pendingParameter = .ram(index: Int(command & 0x1F))
        case 0xA4:
            // Is a password installed? 0xF1: no.
            push(0xF1, aux: false)
        case 0xA7:
            ram[0] |= Self.ctrAuxDisable
        case 0xA8:
            ram[0] &= ~Self.ctrAuxDisable
        case 0xA9:
            // AUX interface test: 0x00, no error.
            push(0x00, aux: false)
        case 0xAA:
            // Controller self-test: 0x55, passed.
            push(0x55, aux: false)
        case 0xAB:
            // Keyboard interface test: 0x00, no error.
            push(0x00, aux: false)
        case 0xAD:
            ram[0] |= Self.ctrKeyboardDisable
        case 0xAE:
            ram[0] &= ~Self.ctrKeyboardDisable
        case 0xC0:
            // Input port: bit 7 set, the keyboard is not inhibited.
            push(0x80, aux: false)
        case 0xD0:
            push(outputPort, aux: false)
        case 0xD1:
            pendingParameter = .outputPort
        case 0xD2:
            pendingParameter = .keyboardOutput
        case 0xD3:
            pendingParameter = .auxOutput
        case 0xD4:
            pendingParameter = .auxDevice
        case 0xDD:
            outputPortLatch &= ~Self.outputPortA20
        case 0xDF:
            outputPortLatch |= Self.outputPortA20
        case 0xE0:
            // Test inputs: both clock and data lines low.
            push(0x00, aux: false)
        case 0xF0...0xFF:
            // Pulse the output lines whose bits (3:0) are clear; bit 0 is the reset line.
            if command & 0x01 == 0 { return .pulseCommand }
        default:
            break
        }
        return nil
    }

    // MARK: The keyboard

    /// A byte the guest sent to the keyboard.
    private mutating func keyboardReceive(_ value: UInt8) {
        // A byte below 0x80 after 0xED, 0xF0 or 0xF3 is that command's parameter; a byte
        // from 0x80 up is a new command, which cancels the old one (as on a real keyboard).
        if let command = keyboardPendingCommand, value < 0x80 {
            keyboardPendingCommand = nil
            switch command {
            case 0xED:
                keyboardLEDs = value & 0x07
                keyboardSend(0xFA)
            case 0xF3:
                keyboardTypematic = value
                keyboardSend(0xFA)
            default:  // 0xF0
                switch value {
                case 0:
                    keyboardSend(0xFA)
                    keyboardSend(keyboardScanSet)
                case 1...3:
                    keyboardScanSet = value
                    keyboardSend(0xFA)
                default:
                    keyboardSend(0xFE)
                }
            }
            return
        }
        keyboardPendingCommand = nil
        switch value {
        case 0xED, 0xF0, 0xF3:
            keyboardPendingCommand = value
            keyboardSend(0xFA)
        case 0xEE:
            keyboardSend(0xEE)
        case 0xF2:
            keyboardSend(0xFA)
            keyboardSend(Self.keyboardID.0)
            keyboardSend(Self.keyboardID.1)
        case 0xF4:
            keyboardScanning = true
            keyboardSend(0xFA)
        case 0xF5:
            keyboardScanning = false
            keyboardTypematic = Self.defaultTypematic
            keyboardSend(0xFA)
        case 0xF6:
            keyboardTypematic = Self.defaultTypematic
            keyboardSend(0xFA)
        case 0xF7...0xFD:
            // Scan-code set 3 key-type commands: acknowledged, no effect.
            keyboardSend(0xFA)
        case 0xFE:
            // Resend: the last byte again.
            push(translated(keyboardLastSent), aux: false)
        case 0xFF:
            keyboardScanning = true
            keyboardLEDs = 0
            keyboardScanSet = 2
            keyboardTypematic = Self.defaultTypematic
            keyboardSend(0xFA)
            keyboardSend(0xAA)
        default:
            // Not a keyboard command: ask for a resend, as a keyboard does.
            keyboardSend(0xFE)
        }
    }

    /// Ctrl, Alt and Delete pressed, then released in reverse order, as the keyboard sends
    /// them in scan-code set 2 (`F0` marks a release, `E0` an extended key).
    package static let ctrlAltDelete: [UInt8] = [0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14]

    /// Set 2 to set 1 for the keys the host presses (besides those `translated` knows).
    private static let set1Codes: [UInt8: UInt8] = [0x14: 0x1D, 0x11: 0x38, 0x71: 0x53]

    /// The host presses keys on the keyboard: `set2` is what the keyboard sends, which the
    /// controller translates to set 1 when its command byte says so (`F0 xx` becomes
    /// `xx`'s set-1 code with bit 7 set). All or nothing: returns false, queueing nothing,
    /// when the output queue lacks room for the whole sequence.
    package mutating func keyboardType(_ set2: [UInt8]) -> Bool {
        var bytes: [UInt8] = []
        if commandByte & Self.ctrTranslate != 0 {
            var release = false
            for byte in set2 {
                switch byte {
                case 0xF0: release = true
                case 0xE0: bytes.append(byte)
                default:
                    let code = Self.set1Codes[byte] ?? translated(byte)
                    bytes.append(release ? code | 0x80 : code)
                    release = false
                }
            }
        } else {
            bytes = set2
        }
        guard Self.queueCapacity - queueCount >= bytes.count else { return false }
        for byte in bytes { push(byte, aux: false) }
        if let last = set2.last { keyboardLastSent = last }
        return true
    }

    /// The keyboard sends `byte`: it passes the translator and joins the output queue.
    private mutating func keyboardSend(_ byte: UInt8) {
        keyboardLastSent = byte
        push(translated(byte), aux: false)
    }

    /// The controller's set-2-to-set-1 translation, for the bytes this keyboard can send.
    private func translated(_ byte: UInt8) -> UInt8 {
        guard commandByte & Self.ctrTranslate != 0 else { return byte }
        switch byte {
        case 0x01: return 0x43
        case 0x02: return 0x41
        case 0x03: return 0x3F
        case 0x83: return 0x41
        case 0x84: return 0x54
        default: return byte
        }
    }

    /// Appends a byte to the output queue; drops it when the queue is full.
    private mutating func push(_ byte: UInt8, aux: Bool, timeout: Bool = false) {
        guard queueCount < Self.queueCapacity else { return }
        var tail = queueHead + queueCount
        if tail >= Self.queueCapacity { tail -= Self.queueCapacity }
        queue[tail] = Output(byte: byte, aux: aux, timeout: timeout)
        queueCount += 1
    }
}

/// The 8042 model on the port bus, at port 0x60 (data) and port 0x64 (status on read,
/// command on write). Register each port on its own (`dataPort` and `commandPort`, one port
/// each): port 0x61 between them is the PC speaker, which is not this device's.
///
/// The device tells the ports apart by their number, so the offset it is registered with
/// does not matter. Any other port reads all ones and ignores writes. An access wider than a
/// byte is treated as a byte access of its low byte; an IN wider than a byte returns the
/// register in the low byte and ones above it.
public final class I8042Device: PortDevice {
    /// The data port.
    public static let dataPort: UInt16 = 0x60
    /// The status (read) and command (write) port.
    public static let commandPort: UInt16 = 0x64
    /// Ports per registration: register `dataPort` and `commandPort` one port each.
    public static let portCount = 1
    /// The keyboard's ISA interrupt line.
    public static let keyboardIRQ: UInt32 = 1
    /// The AUX port's ISA interrupt line.
    public static let auxIRQ: UInt32 = 12

    /// What the guest's reset requests are reported as.
    public static let pulseResetSource = "i8042"
    public static let outputPortResetSource = "i8042 output port"

    /// The controller and the levels last driven on IRQ 1 and IRQ 12.
    private let state = Mutex<(controller: I8042, keyboardLine: Bool, auxLine: Bool)>((I8042(), false, false))
    private let interruptLine: (@Sendable (_ irq: UInt32, _ level: Bool) -> Void)?

    /// - Parameter interruptLine: drives IRQ 1 (`keyboardIRQ`) and IRQ 12 (`auxIRQ`), edge
    ///   style: a line goes high when a byte becomes available for it and the command byte
    ///   enables its interrupt, and low when the guest reads the byte; if another byte is
    ///   waiting, the line goes high again at once, giving a fresh edge per byte. Called on
    ///   the vCPU thread, under the device's lock, so level changes arrive in order.
    public init(interruptLine: (@Sendable (_ irq: UInt32, _ level: Bool) -> Void)? = nil) {
        self.interruptLine = interruptLine
    }

    /// Runs `body` on the controller, then updates the interrupt lines. `lowerFirst` (for a
    /// data read) drops a high line before recomputing it, so each byte gets its own edge.
    private func access<R>(lowerFirst: Bool = false, _ body: (inout I8042) -> R) -> R {
        state.withLock { state in
            let result = body(&state.controller)
            if lowerFirst {
                if state.keyboardLine {
                    state.keyboardLine = false
                    interruptLine?(Self.keyboardIRQ, false)
                }
                if state.auxLine {
                    state.auxLine = false
                    interruptLine?(Self.auxIRQ, false)
                }
            }
            let keyboard = state.controller.keyboardInterruptLevel
            if keyboard != state.keyboardLine {
                state.keyboardLine = keyboard
                interruptLine?(Self.keyboardIRQ, keyboard)
            }
            let aux = state.controller.auxInterruptLevel
            if aux != state.auxLine {
                state.auxLine = aux
                interruptLine?(Self.auxIRQ, aux)
            }
            return result
        }
    }

    public func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 {
        let value: UInt8
        switch port {
        case Self.dataPort: value = access(lowerFirst: true) { $0.readData() }
        case Self.commandPort: value = state.withLock { $0.controller.readStatus() }
        default: return UInt32(truncatingIfNeeded: allOnes(width: width))
        }
        return UInt32(value) | (UInt32(truncatingIfNeeded: allOnes(width: width)) & ~0xFF)
    }

    public func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        let byte = UInt8(truncatingIfNeeded: value)
        let request: I8042.ResetRequest?
        switch port {
        case Self.dataPort: request = access { $0.writeData(byte) }
        case Self.commandPort: request = access { $0.writeCommand(byte) }
        default: return .continue
        }
        switch request {
        case nil: return .continue
        case .pulseCommand: return .stop(.reset(source: Self.pulseResetSource))
        case .outputPortWrite: return .stop(.reset(source: Self.outputPortResetSource))
        }
    }

    /// Presses and releases Ctrl-Alt-Delete on the keyboard, raising IRQ 1 as the command
    /// byte allows (what Firecracker's `SendCtrlAltDel` does on x86). False, with nothing
    /// sent, when the output queue has no room for the sequence.
    public func pressCtrlAltDelete() -> Bool {
        access { $0.keyboardType(I8042.ctrlAltDelete) }
    }

    /// The controller's state, for inspection (a copy; reading it has no side effects).
    package var controller: I8042 { state.withLock { $0.controller } }
}

extension I8042Device {
    /// The controller at its PC place: port 0x60 and port 0x64 (one range each, around the
    /// PC speaker's 0x61), IRQ 1 for the keyboard and 12 for AUX, and a DSDT keyboard device
    /// (_HID PNP0303; there is no mouse to describe). The FADT's 8042 flag follows it.
    package func platformDevice() throws(PlatformError) -> PlatformDevice {
        PlatformDevice(
            name: "i8042",
            ports: [
                try .ports("i8042-data", Self.dataPort, count: Self.portCount),
                try .ports("i8042-command", Self.commandPort, count: Self.portCount),
            ],
            portDevice: self, irqs: [Self.keyboardIRQ, Self.auxIRQ],
            aml: try deviceAML(
                "PS2K", hid: "PNP0303",
                resources: [
                    .ports(Self.dataPort, length: 1), .ports(Self.commandPort, length: 1), .irq([Int(Self.keyboardIRQ)]),
                ]),
            fixedHardware: [.i8042], state: self)
    }
}

extension I8042Device: SnapshotStateful {
    /// The controller and the levels of IRQ 1 and IRQ 12.
    public func saveState(to writer: inout SnapshotWriter) {
        state.withLock { state in
            state.controller.saveState(to: &writer)
            writer.write(state.keyboardLine)
            writer.write(state.auxLine)
        }
    }

    /// Puts back a saved controller; a line that was high is raised again (the interrupt
    /// controller's restored state does not hold the level the device drove).
    public func restoreState(from reader: inout SnapshotReader) throws(SnapshotError) {
        let controller = try I8042(restoring: &reader)
        let keyboardLine = try reader.readBool("the i8042 keyboard line")
        let auxLine = try reader.readBool("the i8042 AUX line")
        state.withLock { state in
            state = (controller, keyboardLine, auxLine)
            if keyboardLine { interruptLine?(Self.keyboardIRQ, true) }
            if auxLine { interruptLine?(Self.auxIRQ, true) }
        }
    }
}
