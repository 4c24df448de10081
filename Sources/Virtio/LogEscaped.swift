/// Text a peer sent (a CONNECT line, a management request), made safe for a log line: printable ASCII stays,
/// backslash and every other byte (escape codes, CR, LF, NUL, invalid UTF-8) become `\xNN`, so a peer cannot
/// forge log lines or drive the operator's terminal. At most `limit` input bytes are shown, then "...".
public func logEscaped<C: Collection>(_ bytes: C, limit: Int = 128) -> String where C.Element == UInt8 {
    var out = ""
    var n = 0
    for b in bytes {
        if n == limit {
            out += "..."
            break
        }
        n += 1
        if b >= 0x20 && b < 0x7f && b != UInt8(ascii: "\\") {
            out.unicodeScalars.append(Unicode.Scalar(b))
        } else {
            let hex = String(b, radix: 16)
            out += "\\x" + (hex.count == 1 ? "0" + hex : hex)
        }
    }
    return out
}

/// The same for a String (its UTF-8 bytes).
public func logEscaped(_ s: String, limit: Int = 128) -> String { logEscaped(Array(s.utf8), limit: limit) }
