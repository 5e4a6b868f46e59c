import Glibc
import VisorHost
import VisorKVM

if SwiftVisorCommand.servesFirecracker {
    // The Firecracker entry point serves its API from SwiftNIO's event loop and Swift's
    // tasks. SIGINT, SIGTERM and SIGUSR1 are blocked here, on the main thread, before any
    // other thread exists, so that every thread inherits the mask and only the signal
    // thread takes them (and stops the VM cleanly, removing the socket). The main thread
    // then parks with the mask still on: an async `main` would end in libdispatch's
    // dispatch_main, which waits in sigsuspend with every signal unblocked, so SIGTERM
    // would kill the process there. `Firecracker.run` parks this thread the same way while
    // the server runs on Swift's task pool, and exits the process when it is done.
    VCPUSignals.block(SignalRouter.controlSignals)
    HostIO.removeInheritedSocketAtExit()
    // Started by swiftvisor-firecracker, the process is named after this file; clients
    // that look for a process named `firecracker` (`/proc/PID/comm`) still find it.
    HostIO.nameProcess("firecracker")
    Firecracker.main(SwiftVisorCommand.firecrackerArguments)
} else {
    SwiftVisorCommand.main()
}
