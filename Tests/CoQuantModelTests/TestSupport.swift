import Foundation
import XCTest
@testable import CoQuantModel

/// `Tests/Fixtures` (copied from the shared reference fixtures, see each folder's README for its origin).
let fixturesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures").path

let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// Where `scripts/download-models.sh` puts the real models: `$COQUANT_MODELS`, default `<package>/models`.
let modelsDir = ProcessInfo.processInfo.environment["COQUANT_MODELS"] ?? packageRoot + "/models"

let smolLM2Path = modelsDir + "/SmolLM2-135M-Instruct.Q4_1.gguf"
let qwen2Path = modelsDir + "/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

/// The model file, or a skip naming the script that downloads it.
func requireModel(_ path: String, _ name: String) throws -> String {
    guard FileManager.default.fileExists(atPath: path) else {
        throw XCTSkip("\(path) is missing: run scripts/download-models.sh \(name)")
    }
    return path
}

/// Asserts |a − b| ≤ atol + rtol·|b| element-wise and reports the worst element.
func assertClose(_ a: [Float], _ b: [Float], atol: Float, rtol: Float = 0, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "\(what): length", file: file, line: line)
    var worst: Float = 0, worstIndex = 0, ok = true
    for i in 0..<min(a.count, b.count) {
        let e = abs(a[i] - b[i])
        if !(e <= atol + rtol * abs(b[i])) { ok = false }
        if e > worst || e.isNaN { worst = e; worstIndex = i }
    }
    XCTAssertTrue(ok, "\(what): max |Δ| \(worst) at \(worstIndex) (\(a[safe: worstIndex] ?? .nan) vs \(b[safe: worstIndex] ?? .nan))",
                  file: file, line: line)
}

extension Array {
    subscript(safe i: Int) -> Element? { indices.contains(i) ? self[i] : nil }
}

/// [A, B, C] row-major → [B, A, C] (e.g. HF's [heads, T, hd] against our position-major [T, heads·hd]).
func swapLeadingAxes(_ x: [Float], _ a: Int, _ b: Int, _ c: Int) -> [Float] {
    var y = [Float](repeating: 0, count: x.count)
    for i in 0..<a { for j in 0..<b { for k in 0..<c { y[(j * a + i) * c + k] = x[(i * b + j) * c + k] } } }
    return y
}
