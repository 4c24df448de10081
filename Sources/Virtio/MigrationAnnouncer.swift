/// A device that can tell its network where the guest is now (virtio-net after a migration:
/// vhost-user's SEND_RARP). Transports offer the matching protocol feature only for such devices.
public protocol MigrationAnnouncer: AnyObject {
    /// Announces the guest's MAC (6 bytes); false if the device refused (a MAC other than its own).
    func announce(mac: [UInt8]) -> Bool
}
