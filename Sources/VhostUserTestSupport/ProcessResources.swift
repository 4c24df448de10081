#if canImport(Glibc)
import Glibc
#endif

/// Open file descriptors of this process (tests run exports in-process, so leaks show up here).
public func openFDCount() -> Int {
    guard let d = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(d) }
    var n = 0
    while let e = readdir(d) {
        // Read in place: a dirent is only as long as its name, so copying the whole d_name array reads past it.
        let name = withUnsafePointer(to: &e.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 1) { String(cString: $0) }
        }
        if name != "." && name != ".." { n += 1 }
    }
    return n - 1   // the directory stream's own fd
}

/// Mappings of this process (/proc/self/maps lines) whose path names a memfd, e.g. "memfd:guest-ram": guest
/// memory a backend mapped and did not let go of shows up as one more.
public func memfdMappingCount() -> Int {
    guard let f = fopen("/proc/self/maps", "r") else { return -1 }
    defer { fclose(f) }
    var n = 0
    var line: UnsafeMutablePointer<CChar>?
    var cap = 0
    while getline(&line, &cap, f) > 0 {
        if let l = line, strstr(l, "/memfd:") != nil { n += 1 }
    }
    free(line)
    return n
}

/// A new private directory `<prefix>XXXXXX` (mkdtemp), e.g. "/tmp/vdevd-xt-".
public func makeTemporaryDirectory(_ prefix: String) throws -> String {
    var t = Array((prefix + "XXXXXX").utf8CString)
    guard t.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
        throw TestSupportError("mkdtemp(\(prefix)): errno \(errno)")
    }
    return String(cString: t)
}
