import CoQuantTensor
import Foundation
import XCTest
@testable import CoQuantModel

/// SmolLM2-135M and Qwen2.5-Coder-0.5B loaded from their GGUFs against transformers' fp32 logits on WikiText slices
/// (`Fixtures/smollm2`, `Fixtures/qwen2`: model_expected.*). Skipped when the model file is absent.
final class RealModelTests: XCTestCase {
    func check(model: LlamaModel, fixture: String, seqs: [(String, Float)]) throws {
        let expected = try SafeTensorsFile(path: fixturesDir + "/\(fixture)/model_expected.safetensors")
        let probes = try expected.ints("probe_vocab_ids")
        let V = model.config.vocabSize
        for (seq, tol) in seqs {
            let ids = try expected.ints("\(seq)_input_ids")
            let logits = model.forward(ids)
            let T = ids.count
            var lse = [Float](), probe = [Float](), nll = [Float]()
            logits.withUnsafeBufferPointer { p in
                for t in 0..<T { lse.append(Float(logSumExpRow(p.baseAddress! + t * V, V))) }
            }
            for t in 0..<T { for id in probes { probe.append(logits[t * V + id]) } }
            for t in 0..<(T - 1) { nll.append(lse[t] - logits[t * V + ids[t + 1]]) }
            assertClose(lse, try expected.floats("\(seq)_logsumexp"), atol: 5e-4, "\(fixture) \(seq) logsumexp")
            assertClose(probe, try expected.floats("\(seq)_probe_logits"), atol: tol, "\(fixture) \(seq) probe logits")
            assertClose(nll, try expected.floats("\(seq)_next_token_nll"), atol: 5e-4, "\(fixture) \(seq) next-token NLL")
            if seq == "seq8" { assertClose(logits, try expected.floats("seq8_logits"), atol: tol, "\(fixture) seq8 logits") }
            let argmaxRef = try expected.ints("\(seq)_argmax"), gap = try expected.floats("\(seq)_top2_gap")
            for t in 0..<T where gap[t] > 2 * tol {
                XCTAssertEqual(argmax(Array(logits[(t * V)..<((t + 1) * V)])), argmaxRef[t], "\(fixture) \(seq) argmax at \(t)")
            }
        }
    }

    func testSmolLM2Logits() throws {
        let loaded = try ModelLoader.load(try requireModel(smolLM2Path, "smollm2"))
        XCTAssertEqual(loaded.model.parameterCount, 134_515_008)
        try check(model: loaded.model, fixture: "smollm2", seqs: [("seq8", 5e-4), ("seq64", 5e-4), ("seq512", 1e-3)])
    }

    func testQwen2Logits() throws {
        let loaded = try ModelLoader.load(try requireModel(qwen2Path, "qwen2.5-coder-0.5b"))
        XCTAssertEqual(loaded.model.parameterCount, 630_167_424)
        XCTAssertTrue(loaded.model.config.qkvBias)
        XCTAssertNotNil(loaded.model.lmHead)
        try check(model: loaded.model, fixture: "qwen2", seqs: [("seq8", 5e-4), ("seq64", 5e-4)])
    }

    /// Llama GGUFs store q/k rows interleaved per head; the loader must undo exactly transformers' permutation.
    func testQKUnpermutation() {
        // One head of head_dim 4, 1 column: GGUF rows (r0, r1, r2, r3) are pairs (x0, y0), (x1, y1) → HF (x0, x1, y0, y1).
        XCTAssertEqual(ModelLoader.unpermuteRows([0, 1, 2, 3], rows: 4, cols: 1, headDim: 4), [0, 2, 1, 3])
        XCTAssertEqual(ModelLoader.ggufTensorName("model.layers.7.self_attn.o_proj.weight"), "blk.7.attn_output.weight")
        XCTAssertEqual(ModelLoader.ggufTensorName("model.layers.0.post_attention_layernorm.weight"), "blk.0.ffn_norm.weight")
    }
}

func logSumExpRow(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
    var m = -Double.infinity
    for i in 0..<n { m = max(m, Double(x[i])) }
    var s = 0.0
    for i in 0..<n { s += exp(Double(x[i]) - m) }
    return m + log(s)
}
