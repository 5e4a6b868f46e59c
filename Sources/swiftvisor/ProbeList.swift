/// The instructions the `probe` guest knows (Guests/probe.S), in its table order.
enum ProbeList {
    static let names: [String] = [
        "int3", "popcnt", "lzcnt", "tzcnt", "clac", "stac", "fwait", "cmpxchg16b", "xgetbv", "xsetbv", "xsave",
        "xrstor", "xsaveopt", "fxsave", "fxrstor", "movbe", "crc32", "andn", "bextr", "blsr", "pdep", "pext",
        "shlx", "sarx", "rorx", "mulx", "adcx", "adox", "rdrand", "rdseed", "rdtsc", "rdtscp", "rdpid", "cpuid",
        "pause", "lfence", "sfence", "mfence", "clflush", "prefetcht0", "movaps", "movdqa", "pxor", "paddd",
        "pshufb", "ptest", "pclmulqdq", "aesenc", "ldmxcsr", "stmxcsr", "movd", "vpxor", "vmovdqa", "fld1", "fnop",
        "fninit", "emms", "wbinvd", "invlpg", "rdmsr", "wrmsr",
    ]
}
