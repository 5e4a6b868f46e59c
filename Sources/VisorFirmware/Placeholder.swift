// ACPI tables built in Swift; see ACPITables.swift.
