import CoQuantModel
import CoQuantQuant
import CoQuantTensor
import Foundation
import XCTest
@testable import CoQuantEval

final class KLDivergenceTests: XCTestCase {
    func testTopIndices() {
        let x: [Float] = [0.5, 3, -1, 3, 2, 7]
        XCTAssertEqual(x.withUnsafeBufferPointer { topIndices($0.baseAddress!, x.count, 3) }, [5, 1, 3])
        XCTAssertEqual(x.withUnsafeBufferPointer { topIndices($0.baseAddress!, x.count, 10) }, [5, 1, 3, 4, 0, 2])
    }

    /// SmolLM2 against itself (KL 0, same top-1 everywhere) and against a copy with RTN W4 (per channel, symmetric)
    /// weights (KL > 0, top-1 rate < 1, worse perplexity). Two windows of 256 tokens keep it short; `coquant eval
    /// --kl-vs` runs the 16 × 2048 figure. Also: the reference survives its cache file, and the top-k KL is a lower
    /// bound of the full-vocabulary KL that is close to it.
    func testSmolLM2AgainstItselfAndRTN() throws {
        let path = modelsDir + "/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("\(path) missing: run scripts/download-models.sh smollm2") }
        let fp = try ModelLoader.load(path, requireTokenizer: true)
        let text = try String(contentsOfFile: packageRoot + "/data/wikitext-2-raw-v1/test.gptq_join.txt", encoding: .utf8)
        let ids = fp.tokenizer!.encode(String(text.prefix(20_000)))
        let seqlen = 256
        let ref = try KLReference.compute(model: fp.model, ids: ids, seqlen: seqlen, windows: 2)
        XCTAssertEqual(ref.tokens, 2 * 255)

        let file = FileManager.default.temporaryDirectory.appendingPathComponent("coquant-kl-\(getpid()).bin").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        try ref.write(to: file, model: path)
        XCTAssertEqual(try KLReference(contentsOf: file), ref)

        let same = try klDivergence(model: fp.model, reference: ref, ids: ids)
        XCTAssertEqual(same.meanKL, 0, accuracy: 1e-6)
        XCTAssertEqual(same.sameTop1, 1)
        XCTAssertEqual(same.deltaPerplexity, 0, accuracy: 1e-3)
        let ppl = try perplexity(model: fp.model, ids: ids, seqlen: seqlen, windows: 2)
        XCTAssertEqual(same.perplexityReference, ppl.perplexity, accuracy: 1e-4 * ppl.perplexity)

        let rtn = try ModelLoader.load(path).model
        let grid = try QuantGrid.weight(bits: 4, scheme: .symmetric)
        for l in rtn.layers.indices {
            for name in DecoderLayer.linearNames {
                let w = rtn.layers[l][linear: name]
                let W = Matrix(rows: w.outFeatures, cols: w.inFeatures, data: w.weight.map(Double.init))
                rtn.layers[l][linear: name].weight = try RTN().solve(W: W, grid: grid).values.data.map { Float($0) }
            }
        }
        let q = try klDivergence(model: rtn, reference: ref, ids: ids)
        print(q.summary)
        XCTAssertGreaterThan(q.meanKL, 0.01)
        XCTAssertLessThan(q.sameTop1, 1)
        XCTAssertGreaterThan(q.sameTop1, 0.5)
        XCTAssertGreaterThan(q.deltaPerplexity, 0)
        XCTAssertEqual(q.klPercentiles["min"]!, q.klPercentiles.values.min()!)
        XCTAssertEqual(q.klPercentiles["max"]!, q.klPercentiles.values.max()!)

        // The full-vocabulary KL of the first window, from both models' logits.
        let V = fp.model.config.vocabSize, window = Array(ids[0..<seqlen])
        let p = fp.model.forward(window), r = rtn.forward(window)
        var full = 0.0
        for t in 0..<(seqlen - 1) {
            let lp = p.withUnsafeBufferPointer { logSumExp($0.baseAddress! + t * V, V) }
            let lq = r.withUnsafeBufferPointer { logSumExp($0.baseAddress! + t * V, V) }
            for i in 0..<V {
                let a = Double(p[t * V + i]) - lp, b = Double(r[t * V + i]) - lq
                full += exp(a) * (a - b)
            }
        }
        full /= Double(seqlen - 1)
        // Coarsening to top-k + rest can only lose KL; on this strongly perturbed model top-32 keeps ≈ 80 % of it.
        var previous = 0.0
        for k in [32, 128, 512] {
            let ref = try KLReference.compute(model: fp.model, ids: ids, seqlen: seqlen, windows: 1, topK: k)
            let firstWindow = try klDivergence(model: rtn, reference: ref, ids: ids).meanKL
            print("window 0: top-\(k) KL \(firstWindow), full KL \(full) (\(Int((100 * firstWindow / full).rounded())) %)")
            XCTAssertLessThanOrEqual(firstWindow, full + 1e-9)
            XCTAssertGreaterThanOrEqual(firstWindow, previous - 1e-9)
            XCTAssertGreaterThan(firstWindow, 0.7 * full)
            previous = firstWindow
        }
    }
}
