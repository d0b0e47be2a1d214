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

    /// Row t's NLL is that of the next token, ids[t + 1], over rows 0 ..< T−1: non-uniform logits and distinct ids
    /// catch an off-by-one in the target or the row; T = 130 takes the two-worker path (rows ≥ 64).
    func testNextTokenNLLPicksTheNextTokenInEachRow() {
        let V = 11, T = 130
        let logits = (0..<(T * V)).map { i in Float((i % V * 7 + i / V * 3) % 11) * 0.5 }
        let ids = (0..<T).map { ($0 * 5 + 2) % V }
        var want = 0.0
        for t in 0..<(T - 1) {
            let row = (0..<V).map { Double(logits[t * V + $0]) }
            let m = row.max()!
            want += m + log(row.reduce(0) { $0 + exp($1 - m) }) - row[ids[t + 1]]
        }
        // logSumExp's exponentials are float32 (≈ 1e-7 relative); a wrong row or target moves the mean by ≥ 1e-2.
        XCTAssertEqual(meanNextTokenNLL(logits: logits, ids: ids, vocab: V), want / Double(T - 1), accuracy: 1e-6)
    }

    /// The protocol on the tiny fixture model: non-overlapping windows, the tail dropped, each window's NLL from its
    /// own forward pass, PPL = exp(mean) and its standard error ppl·√(var/n) — against sums formed here.
    func testPerplexityWindowsAndAggregate() throws {
        let model = try ModelLoader.load(packageRoot + "/Tests/Fixtures/tiny-models/a_llama_gqa_tied").model
        let V = model.config.vocabSize, seqlen = 16
        let ids = (0..<50).map { ($0 * 37 + 11) % V }
        let result = try perplexity(model: model, ids: ids, seqlen: seqlen)
        XCTAssertEqual(result.windowsAvailable, 3)
        XCTAssertEqual(result.windows, 3)
        let nlls = (0..<3).map { w -> Double in
            let window = Array(ids[(w * seqlen)..<((w + 1) * seqlen)])
            return meanNextTokenNLL(logits: model.forward(window), ids: window, vocab: V)
        }
        XCTAssertEqual(result.perWindowMeanNLL, nlls)
        XCTAssertGreaterThan(Set(nlls).count, 1, "distinct windows give distinct NLLs")
        let mean = nlls.reduce(0, +) / 3
        let variance = nlls.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 2
        XCTAssertEqual(result.meanNLL, mean, accuracy: 1e-12)
        XCTAssertEqual(result.perplexity, exp(mean), accuracy: 1e-9)
        XCTAssertEqual(result.perplexityStdError, exp(mean) * (variance / 3).squareRoot(), accuracy: 1e-9)
        XCTAssertGreaterThan(result.perplexityStdError, 0)
        // Resuming after one window scores the rest and gives the same figures.
        let resumed = try perplexity(model: model, ids: ids, seqlen: seqlen, done: [nlls[0]])
        XCTAssertEqual(resumed.perWindowMeanNLL, nlls)
        XCTAssertEqual(resumed.perplexity, result.perplexity)
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
