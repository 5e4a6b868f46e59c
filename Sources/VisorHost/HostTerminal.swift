package import Glibc

/// The terminal settings of a file descriptor, for putting a console in raw mode and back.
package enum HostTerminal {
    /// Puts the terminal on `fd` in raw mode (no line buffering, no echo, no flow control,
    /// no CR/NL translation; ISIG stays on, so Ctrl-C still stops the VM) and returns the
    /// settings it had, or nil when `fd` is not a terminal.
    package static func enterRawMode(_ fd: Int32) -> termios? {
        guard isatty(fd) == 1 else { return nil }
        var attributes = termios()
        // SAFETY: tcgetattr(3) writes only `attributes`, a local that outlives the call.
        guard unsafe tcgetattr(fd, &attributes) == 0 else { return nil }
        let saved = attributes
        attributes.c_lflag &= ~tcflag_t(ICANON | ECHO | IEXTEN)
        attributes.c_iflag &= ~tcflag_t(IXON | ICRNL | INLCR | IGNCR)
        // SAFETY: VMIN and VTIME are indices into the NCCS-byte c_cc array, and the buffer
        // does not escape the closure.
        unsafe withUnsafeMutableBytes(of: &attributes.c_cc) { cc in
            unsafe cc[Int(VMIN)] = 1
            unsafe cc[Int(VTIME)] = 0
        }
        restore(fd, attributes)
        return saved
    }

    /// Gives the terminal on `fd` the settings `attributes`.
    package static func restore(_ fd: Int32, _ attributes: termios) {
        var attributes = attributes
        // SAFETY: tcsetattr(3) reads only `attributes`, a local that outlives the call.
        _ = unsafe tcsetattr(fd, TCSANOW, &attributes)
    }
}
