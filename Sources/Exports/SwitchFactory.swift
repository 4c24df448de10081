import Net

/// Makes the switches named by --switch before the exports that plug into them.
public enum SwitchFactory {
    @discardableResult
    public static func make(_ spec: SwitchSpec) -> NetSwitch {
        SwitchRegistry.shared.switchNamed(spec.id)
    }
}
