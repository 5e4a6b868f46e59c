// An embedding program imports SwiftVisor alone and gets the types it needs to register
// devices and read results: the exit core, the instruction emulator (to add instruction
// handlers), the device models, guest memory, loaders and the Linux boot types, and from
// the KVM layer only the values those APIs carry (decoded exits, injections, register
// sets, errors), not the handles.
@_exported public import VisorCore
@_exported public import VisorEmulator
@_exported public import VisorDevices
@_exported public import VisorMemory
@_exported public import VisorLoader
@_exported public import VisorLinux
@_exported public import enum VisorKVM.VMExit
@_exported public import enum VisorKVM.ExitReason
@_exported public import struct VisorKVM.PortAccess
@_exported public import struct VisorKVM.MMIOAccess
@_exported public import protocol VisorKVM.ExitDataChannel
@_exported public import enum VisorKVM.Injection
@_exported public import struct VisorKVM.InjectionError
@_exported public import struct VisorKVM.Registers
@_exported public import struct VisorKVM.SpecialRegisters
@_exported public import struct VisorKVM.CPUIDEntry
@_exported public import enum VisorKVM.KVMError
@_exported public import struct VisorKVM.Segment
@_exported public import struct VisorKVM.DescriptorTable
@_exported public import struct VisorKVM.FPUState
@_exported public import struct VisorKVM.VCPUEvents
@_exported public import enum VisorKVM.Seccomp
@_exported public import struct VisorKVM.SeccompError
@_exported public import enum VisorHost.HostIO
@_exported public import enum VisorHost.HostThread
// What an instruction handler reads from `EmulationState.instruction`.
@_exported public import struct VisorDecoder.DecodedInstruction
@_exported public import enum VisorDecoder.Operand
@_exported public import struct VisorDecoder.MemoryOperand
@_exported public import enum VisorDecoder.CodeMode
