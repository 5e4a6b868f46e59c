// An embedding program imports SwiftVisor alone and gets the types it needs to register
// devices and read results: the exit core, the device models, guest memory, loaders and
// the Linux boot types.
@_exported public import VisorCore
@_exported public import VisorDevices
@_exported public import VisorMemory
@_exported public import VisorLoader
@_exported public import VisorLinux
