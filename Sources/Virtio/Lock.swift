#if canImport(Glibc)
import Glibc
#endif

/// A plain mutex for the control path (never taken per request).
public final class Lock {
    private let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    public init() { pthread_mutex_init(m, nil) }
    deinit {
        pthread_mutex_destroy(m)
        m.deallocate()
    }
    @inline(__always)
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return try body()
    }
}

/// A one-shot result that the control thread waits for and a poller fills in.
public final class Completion<T> {
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value: T?
    public init() {
        pthread_mutex_init(m, nil)
        pthread_cond_init(cond, nil)
    }
    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(m)
        cond.deallocate()
        m.deallocate()
    }
    public func fulfill(_ v: T) {
        pthread_mutex_lock(m)
        value = v
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(m)
    }
    public func wait() -> T {
        pthread_mutex_lock(m)
        while value == nil { pthread_cond_wait(cond, m) }
        let v = value!
        pthread_mutex_unlock(m)
        return v
    }
}

private final class ThreadBody {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Starts a pthread running body (control and poller threads; no Foundation needed).
public func spawnThread(_ body: @escaping () -> Void) -> pthread_t {
    var t = pthread_t()
    let box = Unmanaged.passRetained(ThreadBody(body))
    pthread_create(&t, nil, { arg in
        Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue().body()
        return nil
    }, box.toOpaque())
    return t
}
