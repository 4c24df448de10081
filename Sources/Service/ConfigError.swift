/// A bad config file: names the file, the line, the table and the key, so an operator can go straight to it.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let line: Int?
    /// `[daemon]`, `[[export]] #2 'disk1'`, or nil for the file itself (a syntax error, an unreadable file).
    public let table: String?
    public let key: String?
    public let message: String

    public init(file: String, line: Int?, table: String?, key: String?, message: String) {
        self.file = file
        self.line = line
        self.table = table
        self.key = key
        self.message = message
    }

    public var description: String {
        var s = file
        if let line { s += ":\(line)" }
        s += ":"
        if let table { s += " \(table)" }
        if let key { s += (table == nil ? " key" : ", key") + " '\(key)'" }
        return s + ((table == nil && key == nil) ? " " : ": ") + message
    }
}
