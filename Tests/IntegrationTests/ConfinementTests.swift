import CBenchSupport
import Glibc
import Synchronization
import SwiftVisor
import SwiftVisorGuests
import Testing
import VisorHost
import VisorKVM

/// Records, on the vCPU thread that makes its first port write, that thread's id and what
/// a system call off the vCPU allowlist returned there.
final class SyscallProbeDevice: PortDevice, @unchecked Sendable {
    /// The vCPU thread's id, 0 until the first write.
    let threadID = Atomic<Int32>(0)
    /// socket(2)'s result and errno on that thread.
    let socketResult = Atomic<Int32>(0)
    let socketErrno = Atomic<Int32>(0)

    func portRead(port: UInt16, offset: UInt16, width: UInt8) -> UInt32 { 0 }

    func portWrite(port: UInt16, offset: UInt16, width: UInt8, value: UInt32) -> DeviceAction {
        guard threadID.load(ordering: .acquiring) == 0 else { return .continue }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        socketErrno.store(fd < 0 ? errno : 0, ordering: .relaxed)
        socketResult.store(fd, ordering: .relaxed)
        if fd >= 0 { close(fd) }
        threadID.store(bench_thread_id(), ordering: .releasing)
        return .continue
    }
}

/// The `Name:\tvalue` fields of a thread's /proc status file.
func threadStatus(_ tid: Int32) -> [String: String] {
    // SAFETY: the FILE is used only in this function and closed by the defer; fgets writes
    // at most line.count bytes into `line`, a local array that outlives each call.
    guard let file = unsafe fopen("/proc/self/task/\(tid)/status", "r") else { return [:] }
    defer { unsafe fclose(file) }
    var fields: [String: String] = [:]
    var line = [CChar](repeating: 0, count: 1024)
    while unsafe fgets(&line, Int32(line.count), file) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let colon = text.firstIndex(of: ":") else { continue }
        let value = text[text.index(after: colon)...].drop { $0 == " " || $0 == "\t" }
        fields[String(text[..<colon])] = String(value.prefix { $0 != "\n" })
    }
    return fields
}

extension KVMIntegration {
    @Suite("Confinement")
    struct ConfinementTests {
        /// Runs pio_loop (writes to port 0x510, then exits through the debug-exit port)
        /// with the probe device on 0x510.
        func runProbe(seccomp: Bool) throws -> (RunReport, SyscallProbeDevice) {
            let probe = SyscallProbeDevice()
            let (report, _) = try runGuest(GuestImages.pioLoop, commandLine: "10") { config in
                config.seccomp = seccomp
                config.portDevices = [.init(name: "probe", range: try! PortRange(base: 0x510, count: 1), device: probe)]
            }
            return (report, probe)
        }

        @Test("a vCPU thread shows Seccomp: 2 and NoNewPrivs: 1 in /proc while the VM runs; the test thread stays unconfined")
        func vcpuThreadStatus() async throws {
            let tid = Atomic<Int32>(0)
            var config = MachineConfiguration(guest: .elf(GuestImages.spin))
            config.consoleOutput = { _ in
                if tid.load(ordering: .relaxed) == 0 { tid.store(bench_thread_id(), ordering: .releasing) }
            }
            let machine = try Machine(config)
            try machine.start()
            var seen: Int32 = 0
            for _ in 0..<10_000 where seen == 0 {
                seen = tid.load(ordering: .acquiring)
                if seen == 0 { try await Task.sleep(for: .milliseconds(1)) }
            }
            let status = threadStatus(seen)
            let report = await machine.stop()
            #expect(seen != 0, "the guest wrote nothing to COM1")
            #expect(seen != bench_thread_id())
            #expect(status["Seccomp"] == "2", "\(status)")
            #expect(status["NoNewPrivs"] == "1", "\(status)")
            #expect(report.outcome == .stopped(.requested))
            #expect(threadStatus(bench_thread_id())["Seccomp"] == "0")
        }

        @Test("a system call off the vCPU allowlist (socket) fails with EPERM in a device handler; the guest runs on")
        func refusedOnVCPUThread() throws {
            let (report, probe) = try runProbe(seccomp: true)
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(probe.threadID.load(ordering: .acquiring) != 0)
            #expect(probe.socketResult.load(ordering: .relaxed) == -1)
            #expect(probe.socketErrno.load(ordering: .relaxed) == EPERM)
            #expect(Seccomp.refusedErrno == EPERM)
            // The filter is the vCPU thread's alone: this thread still makes the call.
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            #expect(fd >= 0)
            if fd >= 0 { close(fd) }
        }

        @Test("with seccomp off (--no-seccomp) the same call succeeds on the vCPU thread, which shows Seccomp: 0")
        func seccompOff() throws {
            let (report, probe) = try runProbe(seccomp: false)
            #expect(report.outcome == .stopped(.guestExit(status: 0)))
            #expect(probe.socketResult.load(ordering: .relaxed) >= 0)
            #expect(probe.socketErrno.load(ordering: .relaxed) == 0)
        }

        @Test(
            "under the main role's filter a thread builds and runs a machine (its vCPU thread inherits the filter beneath its own), and open, socket and prctl(PR_SET_DUMPABLE) fail with EPERM"
        )
        func mainRoleBuildsMachines() throws {
            // What the command line's first machine leaves behind before the filter: /dev/kvm
            // open, shared by every later machine.
            _ = try KVMSystem.shared()
            struct Outcome: Sendable {
                var installed: SeccompError?
                var openErrno: Int32 = 0
                var socketErrno: Int32 = 0
                var dumpableErrno: Int32 = 0
                var report: RunReport?
                var console = ""
                var buildError = ""
            }
            let outcome = Mutex(Outcome())
            var thread = pthread_t()
            let rc = VCPUThread.create(&thread) {
                var result = Outcome()
                do throws(SeccompError) { try Seccomp.install(.main) } catch { result.installed = error }
                // SAFETY: open reads the NUL-terminated path Swift passes for the call.
                let fd = unsafe open("/dev/null", O_RDONLY)
                result.openErrno = fd < 0 ? errno : 0
                if fd >= 0 { close(fd) }
                let sock = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
                result.socketErrno = sock < 0 ? errno : 0
                if sock >= 0 { close(sock) }
                result.dumpableErrno = bench_set_dumpable(1)
                do {
                    let (report, console) = try runGuest(GuestImages.hello)
                    result.report = report
                    result.console = console
                } catch {
                    result.buildError = "\(error)"
                }
                outcome.withLock { $0 = result }
            }
            #expect(rc == 0)
            VCPUThread.join(thread)
            let result = outcome.withLock { $0 }
            #expect(result.installed == nil)
            #expect(result.openErrno == EPERM)
            #expect(result.socketErrno == EPERM)
            #expect(result.dumpableErrno == EPERM)
            #expect(result.buildError.isEmpty, "\(result.buildError)")
            #expect(result.report?.outcome == .stopped(.guestExit(status: 0)), "\(String(describing: result.report))")
            #expect(result.console.contains("Hello"), "\(result.console)")
            // The filter is that thread's alone.
            #expect(threadStatus(bench_thread_id())["Seccomp"] == "0")
        }

        @Test("the main allowlist holds what building and joining machines needs, and not open, socket, execve or kill")
        func mainAllowlist() {
            let allowed = [
                "ioctl": 16, "clone3": 435, "set_robust_list": 273, "seccomp": 317, "prctl": 157,
                "rt_sigtimedwait": 128, "pwrite64": 18, "ftruncate": 77, "futex": 202, "exit_group": 231,
                "pread64": 17, "fsync": 74, "epoll_wait": 232, "epoll_pwait": 281,
            ]
            let refused = [
                "socket": 41, "openat": 257, "open": 2, "execve": 59, "execveat": 322, "fork": 57, "vfork": 58,
                "ptrace": 101, "connect": 42, "kill": 62, "mount": 165, "bpf": 321, "process_vm_writev": 311,
            ]
            for (name, number) in allowed { #expect(Seccomp.allows(.main, syscall: number), "\(name)") }
            for (name, number) in refused { #expect(!Seccomp.allows(.main, syscall: number), "\(name)") }
        }

        @Test("the I/O role allows Unix sockets for vsock (socket for AF_UNIX only), and not open, execve or ioctl")
        func ioRoleSockets() {
            let allowed = [
                "socket": 41, "connect": 42, "accept4": 288, "sendto": 44, "recvfrom": 45, "shutdown": 48, "close": 3,
                "epoll_ctl": 233,
            ]
            let refused = ["openat": 257, "open": 2, "execve": 59, "ioctl": 16, "bind": 49, "listen": 50, "unlink": 87]
            for (name, number) in allowed { #expect(Seccomp.allows(.io, syscall: number), "\(name)") }
            for (name, number) in refused { #expect(!Seccomp.allows(.io, syscall: number), "\(name)") }
            // The main role of a command with a vsock device adds the same calls, and unlink
            // for the listener's path; the plain main role has none of them.
            for number in [41, 42, 288, 44, 45, 48, 87] {
                #expect(Seccomp.allows(.mainWithVsock, syscall: number), "\(number)")
                #expect(!Seccomp.allows(.main, syscall: number), "\(number)")
            }
            // Installed, the filter lets a Unix socket through and refuses any other domain.
            let results = Mutex<(installed: Bool, unix: Int32, inet: Int32)>((false, -1, -1))
            var thread = pthread_t()
            let rc = VCPUThread.create(&thread) {
                let installed: Bool
                do throws(SeccompError) {
                    try Seccomp.install(.io)
                    installed = true
                } catch { installed = false }
                let unix = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
                let unixErrno = unix < 0 ? errno : 0
                if unix >= 0 { close(unix) }
                let inet = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                let inetErrno = inet < 0 ? errno : 0
                if inet >= 0 { close(inet) }
                results.withLock { $0 = (installed, unixErrno, inetErrno) }
            }
            #expect(rc == 0)
            VCPUThread.join(thread)
            let (installed, unix, inet) = results.withLock { $0 }
            #expect(installed)
            #expect(unix == 0)
            #expect(inet == EPERM)
        }

        @Test("the vCPU allowlist holds KVM_RUN's ioctl, console writes, futexes and disk I/O, and not socket, open or execve")
        func allowlist() {
            // x86-64 system call numbers (Swift's Glibc module does not import SYS_*).
            let allowed = [
                "ioctl": 16, "write": 1, "futex": 202, "rt_sigreturn": 15, "exit": 60, "pread64": 17, "pwrite64": 18,
                "fsync": 74,
            ]
            let refused = [
                "socket": 41, "openat": 257, "open": 2, "execve": 59, "fork": 57, "clone": 56,
                "ptrace": 101, "connect": 42, "kill": 62,
            ]
            for (name, number) in allowed { #expect(Seccomp.allows(.vcpu, syscall: number), "\(name)") }
            for (name, number) in refused { #expect(!Seccomp.allows(.vcpu, syscall: number), "\(name)") }
        }
    }
}
