/// A device made reachable to a VM through a transport.
public protocol Export: AnyObject {
    var id: String { get }
    func start()
    func stop()
    var stats: [String: Any] { get }
    var snapshot: ExportSnapshot { get }
}

public enum ExportError: Error, CustomStringConvertible {
    case socket(String, String)
    case device(String, String)

    public var description: String {
        switch self {
        case .socket(let path, let why): return "socket \(path): \(why)"
        case .device(let id, let why): return "export \(id): \(why)"
        }
    }
}
