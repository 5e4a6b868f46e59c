import Glibc
import Testing
import VisorKVM

@Suite("KVMError messages")
struct KVMErrorTests {
    @Test("ENOENT names the path and says KVM is not available")
    func missingDevice() {
        let message = KVMError.cannotOpenDevice(path: "/dev/kvm", errno: ENOENT).description
        #expect(
            message == "cannot open /dev/kvm: No such file or directory (errno 2); "
                + "KVM is not available: load the kvm module or enable virtualization")
    }

    @Test("EACCES names the path twice and says how to get access")
    func permissionDenied() {
        let message = KVMError.cannotOpenDevice(path: "/srv/kvm-node", errno: EACCES).description
        #expect(
            message == "cannot open /srv/kvm-node: Permission denied (errno 13); "
                + "add your user to the group that owns /srv/kvm-node (often 'kvm') or run as root")
    }

    @Test("ENOENT and EACCES give different hints; EPERM shares the permission hint; others get a generic one")
    func hintsDiffer() {
        let enoent = KVMError.cannotOpenDevice(path: "/dev/kvm", errno: ENOENT).description
        let eacces = KVMError.cannotOpenDevice(path: "/dev/kvm", errno: EACCES).description
        let eperm = KVMError.cannotOpenDevice(path: "/dev/kvm", errno: EPERM).description
        let ebusy = KVMError.cannotOpenDevice(path: "/dev/kvm", errno: EBUSY).description
        #expect(enoent != eacces)
        #expect(!enoent.contains("group"))
        #expect(!eacces.contains("kvm module"))
        #expect(eperm.hasSuffix("add your user to the group that owns /dev/kvm (often 'kvm') or run as root"))
        #expect(eperm.contains("Operation not permitted (errno 1)"))
        #expect(ebusy == "cannot open /dev/kvm: Device or resource busy (errno 16); check that KVM works on this machine")
    }

    @Test("unsupportedAPIVersion names the version found and the required 12")
    func apiVersion() {
        #expect(
            KVMError.unsupportedAPIVersion(11).description
                == "KVM API version 11 is not supported; SwiftVisor needs version 12")
        #expect(
            KVMError.unsupportedAPIVersion(-1).description
                == "KVM API version -1 is not supported; SwiftVisor needs version 12")
    }

    @Test("ioctl errors name the ioctl and the errno text and number")
    func ioctl() {
        #expect(
            KVMError.ioctl(name: "KVM_SET_USER_MEMORY_REGION", errno: EINVAL).description
                == "KVM_SET_USER_MEMORY_REGION failed: Invalid argument (errno 22)")
        #expect(KVMError.ioctl(name: "KVM_RUN", errno: EFAULT).description == "KVM_RUN failed: Bad address (errno 14)")
    }

    @Test("the other cases name what failed")
    func others() {
        #expect(
            KVMError.missingCapability("KVM_CAP_USER_MEMORY").description
                == "the host's KVM lacks KVM_CAP_USER_MEMORY, which SwiftVisor needs")
        #expect(
            KVMError.mapRunPage(errno: ENOMEM).description
                == "mapping the vCPU run page failed: Cannot allocate memory (errno 12)")
        #expect(
            KVMError.malformedRunPage("io offset 5000").description
                == "the kernel's run page is malformed: io offset 5000")
        #expect(errnoText(EACCES) == "Permission denied (errno 13)")
    }

    @Test("checkAPIVersion accepts 12 only and reports the version it found")
    func checkAPIVersion() throws {
        #expect(KVMSystem.requiredAPIVersion == 12)
        try KVMSystem.checkAPIVersion(12)
        #expect(throws: KVMError.unsupportedAPIVersion(11)) { try KVMSystem.checkAPIVersion(11) }
        #expect(throws: KVMError.unsupportedAPIVersion(13)) { try KVMSystem.checkAPIVersion(13) }
    }
}
