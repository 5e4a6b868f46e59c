// SwiftVisorProbes: the guests the SwiftVisor library itself runs, embedded as byte arrays.
//
// Only `Guests/host_quirks.16.S` (the 71-byte real-mode probe that tells whether this host's
// KVM interprets ring-0 code and what CPUID a guest really sees). The GuestBuilder plugin
// builds it from source on every `swift build` (Guests/build.sh with GUESTS_ONLY), into
// `ProbeImages`, so a program that embeds SwiftVisor builds none of the test guests.
