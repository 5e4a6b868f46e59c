// VisorDevices: the devices a SwiftVisor machine can place on its buses.
//
// One file per device. A device's file holds:
// - its register model, a value type named for the hardware (`Serial16550`, `I8042`, `CMOS`,
//   `PM1Registers`, `ResetControl`) that knows register offsets, not ports or buses, and is
//   tested without a VM;
// - its bus adapter, a class named `<hardware>Device` (`Serial16550Device`, `I8042Device`,
//   `CMOSDevice`, `PM1Device`, `ResetControlDevice`, `PostCodeDevice`, `PCIConfigDevice`,
//   `DebugExitDevice`), which conforms to `PortDevice` or `MMIODevice`, owns the model's
//   lock and drives its interrupt lines. The name says what is emulated, never the bus or
//   how many ports it takes. A device too simple for a separate model is its adapter alone.
// - its place on a machine: a `platformDevice(...)` method on the adapter that returns the
//   device's `PlatformDevice` at its default ports (or MMIO range), with its IRQs, its
//   DSDT fragment and the ACPI fixed-hardware registers it implements.
//
// `Platform` (Platform.swift) puts the devices of a machine kind together. Adding a device
// means its own file plus one line in `Platform.init`; the buses and the ACPI tables are
// built from `Platform.devices`, so nothing else names its ports again.
