public import VisorKVM

extension VCPUHandle: ExitDataChannel {}

extension VCPUHandle {
    /// Decodes the last exit from the run page. Cheap for I/O and MMIO exits: a few loads,
    /// no allocation.
    @inline(__always)
    public func decodeExit() -> VMExit {
        switch exitReason {
        case ExitReason.io.rawValue:
            guard ioDataIsValid else { return .malformedIO(port: ioPort, width: ioSize, count: ioCount) }
            return .io(PortAccess(isWrite: ioIsOut, port: ioPort, width: ioSize, count: ioCount))
        case ExitReason.mmio.rawValue:
            let length = mmioLength
            guard length >= 1, length <= 8 else {
                return .other(reason: ExitReason.mmio.rawValue, hardwareReason: UInt64(length))
            }
            let width = UInt8(length)
            let isWrite = mmioIsWrite
            return .mmio(MMIOAccess(isWrite: isWrite, address: mmioAddress, width: width,
                                    value: isWrite ? mmioData & allOnes(width: width) : 0))
        case ExitReason.hlt.rawValue:
            return .halt(interruptsEnabled: interruptFlag)
        case ExitReason.shutdown.rawValue:
            return .shutdown
        case ExitReason.internalError.rawValue:
            return .internalError(suberror: internalSuberror, data: internalData)
        case ExitReason.failEntry.rawValue:
            return .failEntry(hardwareReason: failEntryReason, cpu: failEntryCPU)
        case ExitReason.systemEvent.rawValue:
            return .systemEvent(type: systemEventType)
        case ExitReason.exception.rawValue:
            return .exception(vector: exceptionVector, errorCode: exceptionErrorCode)
        case ExitReason.debug.rawValue:
            return .debug
        case ExitReason.intr.rawValue:
            return .interrupted
        case ExitReason.x86Rdmsr.rawValue:
            return .msr(index: msrIndex, value: nil)
        case ExitReason.x86Wrmsr.rawValue:
            return .msr(index: msrIndex, value: msrData)
        default:
            return .other(reason: exitReason, hardwareReason: hardwareExitReason)
        }
    }
}
