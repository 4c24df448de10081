import Net

/// Makes the switches named by --switch before the exports that plug into them, with their tap uplinks.
public enum SwitchFactory {
    /// The switch and, with uplink=tap:IFNAME, its uplink (started; the caller stops it at exit).
    @discardableResult
    public static func make(_ spec: SwitchSpec) throws -> (NetSwitch, TapUplink?) {
        let sw = SwitchRegistry.shared.switchNamed(spec.id)
        guard let name = spec.uplinkTap else { return (sw, nil) }
        do {
            let u = try TapUplink(switch: sw, tapName: name)
            u.start()
            return (sw, u)
        } catch {
            throw SwitchSpecError(switchID: spec.id, key: "uplink", message: "cannot open tap \(name): \(error)")
        }
    }
}
