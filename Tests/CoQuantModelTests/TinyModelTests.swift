import CoQuantTensor
import Foundation
import XCTest
@testable import CoQuantModel

/// The four tiny random-weight checkpoints of `Fixtures/tiny-models` against transformers' fp32 outputs.
final class TinyModelTests: XCTestCase {
    static let variants = ["a_llama_gqa_tied", "b_llama3_rope_untied", "c_qwen2_bias_untied", "d_llama_headdim32"]
    let tol: Float = 1e-4

    func load(_ variant: String) throws -> (LlamaModel, SafeTensorsFile) {
        let dir = fixturesDir + "/tiny-models/" + variant
        return (try ModelLoader.load(dir).model, try SafeTensorsFile(path: dir + "/expected.safetensors"))
    }

    func testLogitsAndEveryHiddenState() throws {
        for variant in Self.variants {
            let (model, expected) = try load(variant)
            let c = model.config
            for s in 0..<2 {
                let ids = try expected.ints("input_ids_\(s)")
                assertClose(model.forward(ids), try expected.floats("logits_\(s)"), atol: tol, rtol: tol, "\(variant) logits_\(s)")
                var x = model.embed(ids)
                assertClose(x, try expected.floats("embed_\(s)"), atol: 0, "\(variant) embed_\(s)")
                for l in 0..<c.numHiddenLayers {
                    model.decoderLayer(l, &x, rows: ids.count, cache: nil)
                    assertClose(x, try expected.floats("hidden_layer\(l)_\(s)"), atol: tol, rtol: tol, "\(variant) hidden_layer\(l)_\(s)")
                }
                var normed = [Float](repeating: 0, count: x.count)
                for t in 0..<ids.count {
                    x.withUnsafeBufferPointer { px in normed.withUnsafeMutableBufferPointer { pn in
                        rmsNorm(px.baseAddress! + t * c.hiddenSize, model.norm, pn.baseAddress! + t * c.hiddenSize, c.hiddenSize, eps: Float(c.rmsNormEps))
                    } }
                }
                assertClose(normed, try expected.floats("final_norm_\(s)"), atol: tol, rtol: tol, "\(variant) final_norm_\(s)")
            }
        }
    }

    /// The hooks see exactly the layer-0 tensors transformers computes (and a no-op hook changes nothing).
    func testLayerZeroInternalsThroughHooks() throws {
        for variant in Self.variants {
            let (model, expected) = try load(variant)
            let c = model.config
            let ids = try expected.ints("input_ids_0")
            let T = ids.count
            var seen: [HookSite: [Float]] = [:]
            model.hook = { layer, site, x, rows, cols in
                if layer == 0 { seen[site] = Array(UnsafeBufferPointer(start: x, count: rows * cols)) }
            }
            let logits = model.forward(ids)
            model.hook = nil
            assertClose(logits, try expected.floats("logits_0"), atol: tol, rtol: tol, "\(variant) logits with hook")
            assertClose(seen[.attentionInput]!, try expected.floats("l0_input_layernorm_0"), atol: tol, rtol: tol, "\(variant) input_layernorm")
            assertClose(seen[.values]!, try expected.floats("l0_v_proj_0"), atol: tol, rtol: tol, "\(variant) v_proj")
            let kRope = swapLeadingAxes(try expected.floats("l0_k_rope_0"), c.numKeyValueHeads, T, c.headDim)
            assertClose(seen[.keys]!, kRope, atol: tol, rtol: tol, "\(variant) k after RoPE")
            assertClose(seen[.oProjInput]!, try expected.floats("l0_attn_context_0"), atol: tol, rtol: tol, "\(variant) attn context")
            assertClose(seen[.mlpInput]!, try expected.floats("l0_post_attention_layernorm_0"), atol: tol, rtol: tol, "\(variant) post_attention_layernorm")
            XCTAssertEqual(seen[.downProjInput]?.count, T * c.intermediateSize)
        }
    }

    func testKVCacheDecodeMatchesFullPass() throws {
        for variant in Self.variants {
            let (model, expected) = try load(variant)
            let c = model.config
            let ids = try expected.ints("input_ids_0")
            let prefill = try expected.ints("kv_prefill_len")[0]
            let cache = KVCache(config: c, capacity: 32)
            let last = model.forward(Array(ids[0..<prefill]), cache: cache, logits: .last)
            assertClose(last, try expected.floats("kv_prefill_last_logits"), atol: tol, rtol: tol, "\(variant) prefill last row")
            var decoded: [Float] = []
            for t in prefill..<ids.count { decoded += model.forward([ids[t]], cache: cache, logits: .last) }
            assertClose(decoded, try expected.floats("kv_decode_logits"), atol: tol, rtol: tol, "\(variant) cached decode")
            let keys = swapLeadingAxes(try expected.floats("kv_layer0_keys_rope"), c.numKeyValueHeads, ids.count, c.headDim)
            assertClose(cache.keys(layer: 0), keys, atol: tol, rtol: tol, "\(variant) cached keys")
            let values = swapLeadingAxes(try expected.floats("kv_layer0_values"), c.numKeyValueHeads, ids.count, c.headDim)
            assertClose(cache.values(layer: 0), values, atol: tol, rtol: tol, "\(variant) cached values")

            // Greedy: prefill all 17, then two cached steps.
            cache.reset()
            var next = argmax(model.forward(ids, cache: cache, logits: .last))
            var greedy = [next]
            for _ in 0..<2 {
                next = argmax(model.forward([next], cache: cache, logits: .last))
                greedy.append(next)
            }
            XCTAssertEqual(greedy, try expected.ints("greedy_new_ids"), variant)
        }
    }

    /// Packed segments (zero-shot batching) compute what separate passes compute: standalone segments as their own
    /// sequences, a continued segment as its prefix followed by it.
    func testPackedSequencesMatchSeparatePasses() throws {
        for variant in Self.variants {
            let (model, expected) = try load(variant)
            let V = model.config.vocabSize
            let ids = try expected.ints("input_ids_0")
            let a = Array(ids[0..<5]), context = Array(ids[5..<12]), c = Array(ids[12...]), d = [ids[16], ids[3], ids[7]]
            var packing = PackedSequences()
            packing.append(rows: a.count)
            let b = packing.append(rows: context.count)
            packing.append(rows: c.count, prefix: b)
            packing.append(rows: d.count, prefix: b)
            packing.append(rows: ids.count)
            let packed = model.forward(packed: a + context + c + d + ids, packing, logits: .all)
            let separate = model.forward(a) + model.forward(context) + Array(model.forward(context + c).suffix(c.count * V))
                + Array(model.forward(context + d).suffix(d.count * V)) + model.forward(ids)
            assertClose(packed, separate, atol: tol, rtol: tol, "\(variant) packed segments")
            XCTAssertEqual(packing.segments.map(\.start), [0, 0, 7, 7, 0])

            let picked = [3, 13, 20, 21]
            let rows = model.forward(packed: a + context + c + d + ids, packing, logits: .rows(picked))
            assertClose(rows, picked.flatMap { packed[($0 * V)..<(($0 + 1) * V)] }, atol: 1e-5, rtol: 1e-5, "\(variant) selected logit rows")
        }
    }

    func testRopeTables() throws {
        for variant in Self.variants {
            let (model, expected) = try load(variant)
            let half = model.config.headDim / 2
            let invRef = try expected.doubles("rope_inv_freq_f64_formula")
            for i in 0..<half { XCTAssertEqual(model.invFreq[i], invRef[i], accuracy: 1e-12 * invRef[i], variant) }
            let positions = try expected.ints("rope_positions")
            let cosRef = try expected.doubles("rope_table_cos_f64"), sinRef = try expected.doubles("rope_table_sin_f64")
            model.ensureRope(positions.max()! + 1)
            for (r, p) in positions.enumerated() {
                let bound = p <= 1000 ? 1e-6 : 1e-3
                for i in 0..<(2 * half) {   // HF tables are [freqs, freqs]
                    let j = i % half
                    XCTAssertEqual(Double(model.ropeCos[p * half + j]), cosRef[r * 2 * half + i], accuracy: bound, "\(variant) cos @\(p)")
                    XCTAssertEqual(Double(model.ropeSin[p * half + j]), sinRef[r * 2 * half + i], accuracy: bound, "\(variant) sin @\(p)")
                }
            }
        }
    }

    /// v4-style `rope_theta` / `rope_scaling` keys give the same configuration as v5's `rope_parameters`.
    func testLegacyConfigKeys() throws {
        for variant in Self.variants {
            let dir = fixturesDir + "/tiny-models/" + variant
            XCTAssertEqual(try ModelConfiguration.load(dir + "/config.json"), try ModelConfiguration.load(dir + "/config.legacy.json"), variant)
        }
        let b = try ModelConfiguration.load(fixturesDir + "/tiny-models/b_llama3_rope_untied/config.json")
        XCTAssertEqual(b.ropeScaling?.ropeType, "llama3")
        XCTAssertEqual(b.ropeTheta, 500000)
    }
}

func argmax(_ x: [Float]) -> Int {
    var best = 0
    for i in x.indices where x[i] > x[best] { best = i }
    return best
}
