#if canImport(Glibc)
import Glibc
#endif

/// Users and groups named in a config: a name from the system's databases, or a number.
enum Account {
    static func uid(_ text: String) -> UInt32? {
        if let n = UInt32(text), n != UInt32.max { return n }
        var pw = passwd(), result: UnsafeMutablePointer<passwd>?
        var buf = [CChar](repeating: 0, count: 4096)
        guard getpwnam_r(text, &pw, &buf, buf.count, &result) == 0, result != nil else { return nil }
        return pw.pw_uid
    }

    static func gid(_ text: String) -> UInt32? {
        if let n = UInt32(text), n != UInt32.max { return n }
        var gr = group(), result: UnsafeMutablePointer<group>?
        var buf = [CChar](repeating: 0, count: 16384)
        guard getgrnam_r(text, &gr, &buf, buf.count, &result) == 0, result != nil else { return nil }
        return gr.gr_gid
    }
}
