import CoQuantModel
import CoQuantTensor
import Foundation
import XCTest
@testable import CoQuantEval

let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
let modelsDir = ProcessInfo.processInfo.environment["COQUANT_MODELS"] ?? packageRoot + "/models"

final class PerplexityTests: XCTestCase {
    func testLogSumExpMatchesFloat64() {
        var rng = SeededGenerator(seed: 7)
        for n in [1, 7, 8, 300, 49_152] {
            let x = (0..<n).map { _ in Float(rng.nextDouble() * 60 - 30) }
            let m = Double(x.max()!)
            let ref = m + log(x.reduce(0.0) { $0 + exp(Double($1) - m) })
            XCTAssertEqual(x.withUnsafeBufferPointer { logSumExp($0.baseAddress!, n) }, ref, accuracy: 1e-6, "n \(n)")
        }
    }

    func testWindowingAndMean() throws {
        // A model-free check of the protocol arithmetic: uniform logits give NLL = log V in every window.
        let V = 10
        let ids = Array(repeating: 3, count: 25)
        let logits = [Float](repeating: 0.5, count: 5 * V)
        XCTAssertEqual(meanNextTokenNLL(logits: logits, ids: Array(ids[0..<5]), vocab: V), log(Double(V)), accuracy: 1e-6)
    }

    /// The first two WikiText-2 windows of SmolLM2 against transformers' per-window NLL (float64 column).
    func testSmolLM2FirstWindows() throws {
        let path = modelsDir + "/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("\(path) missing: run scripts/download-models.sh smollm2") }
        let loaded = try ModelLoader.load(path, requireTokenizer: true)
        let text = try String(contentsOfFile: packageRoot + "/data/wikitext-2-raw-v1/test.gptq_join.txt", encoding: .utf8)
        let ids = loaded.tokenizer!.encode(text)
        XCTAssertEqual(ids.count, 304_986)
        let fixture = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath:
            packageRoot + "/Tests/Fixtures/smollm2/wikitext2_ppl_first16x2048.json"))) as! [String: Any]
        let reference = fixture["per_window_mean_nll_f64"] as! [Double]
        let result = try perplexity(model: loaded.model, ids: ids, seqlen: 2048, windows: 2)
        XCTAssertEqual(result.windowsAvailable, 148)
        for w in 0..<2 { XCTAssertEqual(result.perWindowMeanNLL[w], reference[w], accuracy: 2e-4, "window \(w)") }
    }
}
