// swift-tools-version:6.0
import PackageDescription

// The data-path modules run per request: no dynamic exclusivity checks there (bounds checks stay on;
// every guest-controlled value is validated explicitly).
let dataPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"])]

let package = Package(
    name: "vdevd",
    products: [
        .executable(name: "vdevd", targets: ["DeviceDaemon"]),
        .executable(name: "vdev-bench", targets: ["VdevBench"]),
        .executable(name: "vdevctl", targets: ["VdevCtl"]),
        .library(name: "VhostUserTestSupport", targets: ["VhostUserTestSupport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // Linux-only C: liburing, SCM_RIGHTS, fences, ioctl numbers. Swift never sees a macro.
        .target(
            name: "CVdevd",
            path: "Sources/CVdevd",
            linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("aio")]
        ),
        // Guest memory, split virtqueues, descriptor chains, pollers.
        .target(name: "Virtio", dependencies: ["CVdevd"], path: "Sources/Virtio", swiftSettings: dataPath),
        .target(name: "Blk", dependencies: ["Virtio", "CVdevd"], path: "Sources/Blk", swiftSettings: dataPath),
        .target(name: "Vsock", dependencies: ["Virtio", "CVdevd"], path: "Sources/Vsock", swiftSettings: dataPath),
        .target(name: "Net", dependencies: ["Virtio", "CVdevd"], path: "Sources/Net", swiftSettings: dataPath),
        .target(
            name: "Exports",
            dependencies: ["Virtio", "Blk", "Vsock", "Net", "CVdevd", .product(name: "Logging", package: "swift-log")],
            path: "Sources/Exports"
        ),
        // The daemon as a host service: config file, the running set of exports, management socket, metrics.
        .target(
            name: "Service",
            dependencies: [
                "Exports", "Virtio", "CVdevd",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Sources/Service"
        ),
        .executableTarget(
            name: "DeviceDaemon",
            dependencies: [
                "Service", "Exports", "Blk", "Net", "Virtio", "CVdevd",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/DeviceDaemon"
        ),
        // The management socket's client.
        .executableTarget(
            name: "VdevCtl",
            dependencies: ["Service", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/VdevCtl"
        ),
        // A vhost-user frontend (QEMU's part) over a real socket with memfd guest memory.
        .target(
            name: "VhostUserTestSupport",
            dependencies: ["CVdevd", .product(name: "Logging", package: "swift-log")],
            path: "Sources/VhostUserTestSupport"
        ),
        // Load generator for any vhost-user-blk socket (vdevd, qemu-storage-daemon).
        .executableTarget(
            name: "VdevBench",
            dependencies: ["VhostUserTestSupport", "Virtio", "CVdevd",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/VdevBench",
            // The load generator must never be the bottleneck: no dynamic exclusivity checks in its loop.
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]
        ),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "CVdevd", "VhostUserTestSupport"], path: "Tests/VirtioTests"),
        .testTarget(
            name: "VsockTests",
            dependencies: ["Exports", "Vsock", "Virtio", "VhostUserTestSupport", "CVdevd",
                           .product(name: "Logging", package: "swift-log")],
            path: "Tests/VsockTests"
        ),
        .testTarget(
            name: "NetTests",
            dependencies: ["Exports", "Net", "Virtio", "VhostUserTestSupport", "CVdevd",
                           .product(name: "Logging", package: "swift-log")],
            path: "Tests/NetTests"
        ),
        .testTarget(
            name: "ExportsTests",
            dependencies: ["Exports", "Blk", "Virtio", "VhostUserTestSupport", "CVdevd"],
            path: "Tests/ExportsTests"
        ),
        // The VDUSE transport against a scripted kernel side.
        .testTarget(
            name: "VduseTests",
            dependencies: ["Exports", "Blk", "Net", "Virtio", "VhostUserTestSupport", "CVdevd",
                           .product(name: "Logging", package: "swift-log")],
            path: "Tests/VduseTests"
        ),
        .testTarget(
            name: "ServiceTests",
            dependencies: ["Service", "Exports", "Virtio", "VhostUserTestSupport", "CVdevd"],
            path: "Tests/ServiceTests"
        ),
    ],
    swiftLanguageModes: [.v5]
)
