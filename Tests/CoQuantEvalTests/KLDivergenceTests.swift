import CoQuantModel
import CoQuantQuant
import CoQuantTensor
import Foundation
import XCTest
@testable import CoQuantEval

final class KLDivergenceTests: XCTestCase {
    /// Every decoder linear of `model` replaced by its RTN weights (per channel, symmetric): a perturbed copy.
    func roundWeightsToNearest(_ model: LlamaModel, bits: Int) throws {
        let grid = try QuantGrid.weight(bits: bits, scheme: .symmetric)
        for l in model.layers.indices {
            for name in DecoderLayer.linearNames {
                let w = model.layers[l][linear: name]
                let W = Matrix(rows: w.outFeatures, cols: w.inFeatures, data: w.weight.map(Double.init))
                model.layers[l][linear: name].weight = try RTN().solve(W: W, grid: grid).values.data.map { Float($0) }
            }
        }
    }

    func testTopIndices() {
        let x: [Float] = [0.5, 3, -1, 3, 2, 7]
        XCTAssertEqual(x.withUnsafeBufferPointer { topIndices($0.baseAddress!, x.count, 3) }, [5, 1, 3])
        XCTAssertEqual(x.withUnsafeBufferPointer { topIndices($0.baseAddress!, x.count, 10) }, [5, 1, 3, 4, 0, 2])
    }

    /// Every statistic of the result against its definition, on the tiny fixture model (vocab 300) and a copy with
    /// RTN W3 weights: with top-k = V the cached reference keeps the whole distribution, so the KL is the full one.
    func testTinyModelStatisticsMatchTheirDefinitions() throws {
        let dir = packageRoot + "/Tests/Fixtures/tiny-models/a_llama_gqa_tied"
        let fp = try ModelLoader.load(dir).model, q = try ModelLoader.load(dir).model
        try roundWeightsToNearest(q, bits: 3)
        let V = fp.config.vocabSize, seqlen = 16, windows = 3
        let ids = (0..<(windows * seqlen + 5)).map { ($0 * 53 + 7) % V }
        let ref = try KLReference.compute(model: fp, ids: ids, seqlen: seqlen, windows: windows, topK: V)
        let result = try klDivergence(model: q, reference: ref, ids: ids)

        var kl: [Double] = [], same = 0, nllP: [Double] = [], nllQ: [Double] = [], deltaP: [Double] = []
        for w in 0..<windows {
            let window = Array(ids[(w * seqlen)..<((w + 1) * seqlen)])
            let p = fp.forward(window).map(Double.init), r = q.forward(window).map(Double.init)
            for t in 0..<(seqlen - 1) {
                let rowP = Array(p[(t * V)..<((t + 1) * V)]), rowQ = Array(r[(t * V)..<((t + 1) * V)])
                let lseP = log(rowP.map(exp).reduce(0, +)), lseQ = log(rowQ.map(exp).reduce(0, +))
                kl.append(zip(rowP, rowQ).map { a, b in exp(a - lseP) * ((a - lseP) - (b - lseQ)) }.reduce(0, +))
                if rowP.firstIndex(of: rowP.max()!) == rowQ.firstIndex(of: rowQ.max()!) { same += 1 }
                nllP.append(lseP - rowP[window[t + 1]])
                nllQ.append(lseQ - rowQ[window[t + 1]])
                deltaP.append(exp(-nllQ.last!) - exp(-nllP.last!))
            }
        }
        let n = Double(kl.count)
        XCTAssertEqual(result.tokens, windows * (seqlen - 1))
        let mean = kl.reduce(0, +) / n
        let sd = (kl.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / (n - 1)).squareRoot()
        XCTAssertGreaterThan(mean, 1e-3, "RTN W3 changes the distribution")
        XCTAssertEqual(result.meanKL, mean, accuracy: 1e-5 * max(1, mean))
        XCTAssertEqual(result.meanKLStderr, sd / n.squareRoot(), accuracy: 1e-5)
        // Percentiles with linear interpolation between order statistics (numpy's default, as llama.cpp reports).
        let sorted = kl.sorted()
        func percentile(_ q: Double) -> Double {
            let x = q / 100 * (n - 1), i = Int(x), f = x - Double(i)
            return i + 1 < sorted.count ? sorted[i] + f * (sorted[i + 1] - sorted[i]) : sorted[i]
        }
        for (key, q) in [("min", 0.0), ("1", 1), ("10", 10), ("median", 50), ("90", 90), ("99", 99), ("max", 100)] {
            XCTAssertEqual(result.klPercentiles[key]!, percentile(q), accuracy: 1e-5 * max(1, percentile(q)), key)
        }
        let top1 = Double(same) / n
        XCTAssertLessThan(top1, 1, "some top-1 tokens change")
        XCTAssertEqual(result.sameTop1, top1)
        XCTAssertEqual(result.sameTop1Stderr, (top1 * (1 - top1) / n).squareRoot(), accuracy: 1e-12)
        // Float32 logits and exponentials: ≈ 1e-7 relative per token.
        XCTAssertEqual(result.perplexityReference, exp(nllP.reduce(0, +) / n), accuracy: 1e-6 * result.perplexityReference)
        XCTAssertEqual(result.perplexity, exp(nllQ.reduce(0, +) / n), accuracy: 1e-6 * result.perplexity)
        XCTAssertEqual(result.deltaPerplexity, result.perplexity - result.perplexityReference, accuracy: 1e-12)
        XCTAssertEqual(result.meanDeltaP, deltaP.reduce(0, +) / n, accuracy: 1e-6)
        XCTAssertEqual(result.rmsDeltaP, (deltaP.map { $0 * $0 }.reduce(0, +) / n).squareRoot(), accuracy: 1e-6)
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
        try roundWeightsToNearest(rtn, bits: 4)
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
