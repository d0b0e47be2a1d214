// swift-tools-version:6.0
import PackageDescription

// Hand-written SIMD loops (softmax, RMSNorm, dequantization) need AVX2 + FMA; at the baseline x86-64 target
// SIMD8<Float> FMAs become library calls (DESIGN.md §3).
let kernelFlags: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-target-cpu", "haswell"])]

let package = Package(
    name: "CoQuant",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "coquant", targets: ["coquant"]),
        .library(name: "CoQuant", targets: ["CoQuantTensor", "CoQuantModel", "CoQuantQuant", "CoQuantEval", "CoQuantRuntime", "CoQuantExport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]),
        .target(name: "CoQuantTensor", dependencies: ["COpenBLAS", "CCoQuantKernels"], swiftSettings: kernelFlags),
        .target(name: "CoQuantModel", dependencies: ["CoQuantTensor"], swiftSettings: kernelFlags),
        .target(name: "CoQuantQuant", dependencies: ["CoQuantModel", "CoQuantTensor"], swiftSettings: kernelFlags),
        .target(name: "CoQuantEval", dependencies: ["CoQuantModel", "CoQuantTensor"], swiftSettings: kernelFlags),
        // The hand-written kernels in C (vpmaddubsw needs intrinsics): the Runtime's integer GEMM and the decode
        // attention Tensor wraps. AVX2 paths carry target attributes and a cpuid check, so the C code builds for any
        // x86-64. -O3 also in debug builds: the tile loops must unroll into registers for the tests to run fast.
        .target(name: "CCoQuantKernels", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]),
        .target(name: "CoQuantRuntime", dependencies: ["CoQuantModel", "CoQuantTensor", "CCoQuantKernels"], swiftSettings: kernelFlags),
        // Formats other tools load (GGUF): writes what a folder holds, so it needs the Model layer only.
        .target(name: "CoQuantExport", dependencies: ["CoQuantModel"], swiftSettings: kernelFlags),
        .executableTarget(name: "coquant", dependencies: [
            "CoQuantModel", "CoQuantEval", "CoQuantQuant", "CoQuantRuntime", "CoQuantExport",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "coquant-bench", dependencies: ["CoQuantModel", "CoQuantQuant", "CoQuantEval"], path: "bench/Sources",
                          swiftSettings: kernelFlags),
        .testTarget(name: "CoQuantTensorTests", dependencies: ["CoQuantTensor", "CoQuantModel"]),
        .testTarget(name: "CoQuantModelTests", dependencies: ["CoQuantModel"]),
        .testTarget(name: "CoQuantQuantTests", dependencies: ["CoQuantQuant", "CoQuantModel", "CoQuantTensor"]),
        .testTarget(name: "CoQuantRuntimeTests", dependencies: ["CoQuantRuntime", "CCoQuantKernels", "CoQuantQuant", "CoQuantModel", "CoQuantTensor"]),
        .testTarget(name: "CoQuantExportTests", dependencies: ["CoQuantExport", "CoQuantQuant", "CoQuantModel", "CoQuantTensor"]),
        .testTarget(name: "CoQuantEvalTests", dependencies: ["CoQuantEval", "CoQuantModel", "CoQuantQuant", "CoQuantTensor"]),
        // Runs the built `coquant` executable as a subprocess (found next to the test bundle), so it links no module.
        .testTarget(name: "CoQuantCLITests"),
    ],
    // Swift 5 mode: the numeric kernels hand raw pointers to concurrentPerform, which strict Sendable checking rejects.
    swiftLanguageModes: [.v5]
)
