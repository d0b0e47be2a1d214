import CoQuantModel
import CoQuantTensor
import Foundation
import XCTest
@testable import CoQuantQuant

let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
let fixturesDir = packageRoot + "/Tests/Fixtures"
let modelsDir = ProcessInfo.processInfo.environment["COQUANT_MODELS"] ?? packageRoot + "/models"

/// An orthogonal matrix for tests: the eigenvectors of a random symmetric matrix.
func testOrthogonal(_ n: Int, seed: UInt64) throws -> Matrix<Double> {
    var g = SeededGenerator(seed: seed)
    var a = Matrix<Double>(zeros: n, n)
    for i in 0..<n { for j in 0...i { let x = g.nextDouble() - 0.5; a[i, j] = x; a[j, i] = x } }
    return try symmetricEigen(a).vectors
}

/// Largest |a − b|: infinity when the lengths differ, NaN when any difference is NaN, so `XCTAssertLessThan(…, tol)`
/// fails on short or broken output.
func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    guard a.count == b.count else { return .infinity }
    var m: Float = 0
    for (x, y) in zip(a, b) {
        let d = abs(x - y)
        if d.isNaN { return .nan }
        m = max(m, d)
    }
    return m
}

/// Norm fusion and rotation fusion at full precision compute the same function (COQUANT_RESQ.md §6.1 item 6).
final class FusionTests: XCTestCase {
    static let variants = ["a_llama_gqa_tied", "b_llama3_rope_untied", "c_qwen2_bias_untied", "d_llama_headdim32"]
    let ids = [1, 17, 250, 3, 99, 299, 0, 42, 42, 7, 128]

    func testFusedAndRotatedTinyModelsPreserveLogits() throws {
        for variant in Self.variants {
            let dir = fixturesDir + "/tiny-models/" + variant
            let reference = try ModelLoader.load(dir).model.forward(ids)
            let model = try ModelLoader.load(dir).model
            let c = model.config
            fuseNorms(model, centerEmbeddings: false)
            XCTAssertLessThan(maxAbsDiff(model.forward(ids), reference), 1e-4, "\(variant) norm fusion")
            rotateResidual(model, try testOrthogonal(c.hiddenSize, seed: 1))
            XCTAssertLessThan(maxAbsDiff(model.forward(ids), reference), 1e-4, "\(variant) residual rotation")
            for l in 0..<c.numHiddenLayers {
                let qv = try (0..<c.numKeyValueHeads).map { try testOrthogonal(c.headDim, seed: UInt64(10 * l + $0 + 2)) }
                rotateValueHeads(model, layer: l, qv)
            }
            XCTAssertLessThan(maxAbsDiff(model.forward(ids), reference), 1e-4, "\(variant) value-head rotation")
            XCTAssertTrue(model.norm.allSatisfy { $0 == 1 })
        }
    }

    /// The reference's embedding centring changes the function; with it on, the fused model equals the original
    /// with centred embeddings (the oracle the spec gives), not the original.
    func testEmbeddingCentringMatchesCentredOriginal() throws {
        let dir = fixturesDir + "/tiny-models/a_llama_gqa_tied"
        let centred = try ModelLoader.load(dir).model
        let d = centred.config.hiddenSize
        centred.lmHead = Linear(weight: centred.embedTokens, inFeatures: d, outFeatures: centred.config.vocabSize)
        for r in 0..<centred.config.vocabSize {
            let mean = (0..<d).reduce(0.0) { $0 + Double(centred.embedTokens[r * d + $1]) } / Double(d)
            for j in 0..<d { centred.embedTokens[r * d + j] = Float(Double(centred.embedTokens[r * d + j]) - mean) }
        }
        let model = try ModelLoader.load(dir).model
        fuseNorms(model, centerEmbeddings: true)
        rotateResidual(model, try testOrthogonal(d, seed: 5))
        XCTAssertLessThan(maxAbsDiff(model.forward(ids), centred.forward(ids)), 1e-4)
        XCTAssertGreaterThan(maxAbsDiff(model.forward(ids), try ModelLoader.load(dir).model.forward(ids)), 1e-2)
    }

    /// QuaRot's rotations with its online Hadamards (down_proj input, per-head q/k) at 16 bits: same function.
    func testQuaRotRotationsPreserveFunction() throws {
        for variant in Self.variants {
            let dir = fixturesDir + "/tiny-models/" + variant
            let reference = try ModelLoader.load(dir).model.forward(ids)
            let model = try ModelLoader.load(dir).model
            var options = QuantizeOptions(method: .quarot, scheme: QuantScheme(weightBits: 16))
            options.centerEmbeddings = false
            let online = try XCTUnwrap(applyQuaRotRotations(model, options: options))
            installHooks(model, online: online, activations: nil, keys: nil, values: nil)
            XCTAssertLessThan(maxAbsDiff(model.forward(ids), reference), 1e-4, variant)
            // The across-heads mixing is really there: without it o_proj's fused weight differs.
            XCTAssertNotNil(online.acrossHeads)
            let unmixed = try ModelLoader.load(dir).model
            options.headMixing = false
            _ = applyQuaRotRotations(unmixed, options: options)
            XCTAssertGreaterThan(maxAbsDiff(unmixed.layers[0].selfAttn.oProj.weight, model.layers[0].selfAttn.oProj.weight), 1e-3, variant)
            // Only the fused rotations (--no-online-rotations): nothing to run online, the function unchanged.
            let fusedOnly = try ModelLoader.load(dir).model
            options.onlineRotations = false
            XCTAssertNil(applyQuaRotRotations(fusedOnly, options: options))
            XCTAssertLessThan(maxAbsDiff(fusedOnly.forward(ids), reference), 1e-4, variant)
            // The same with a KV cache, token by token: the rotated keys in the cache still give the same scores.
            let cache = KVCache(config: model.config, capacity: ids.count)
            var decoded: [Float] = []
            for id in ids { decoded += model.forward([id], cache: cache, logits: .last) }
            let V = model.config.vocabSize
            XCTAssertLessThan(maxAbsDiff(Array(decoded[((ids.count - 1) * V)...]), Array(reference[((ids.count - 1) * V)...])), 1e-4, variant)
        }
    }

    /// The check: SmolLM2 with norm fusion and rotations fused, all bits 16, logits within 1e-3 of the
    /// original — a random orthogonal residual rotation, and QuaRot's rotations with its online Hadamards.
    func testSmolLM2RotatedAt16BitsPreservesLogits() throws {
        let path = modelsDir + "/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("\(path) missing: run scripts/download-models.sh smollm2") }
        let expected = try SafeTensorsFile(path: fixturesDir + "/smollm2/model_expected.safetensors")
        let ids = try expected.ints("seq64_input_ids")
        let model = try ModelLoader.load(path).model
        let reference = model.forward(ids)
        fuseNorms(model, centerEmbeddings: false)
        rotateResidual(model, try testOrthogonal(model.config.hiddenSize, seed: 3))
        let rotated = maxAbsDiff(model.forward(ids), reference)
        print("SmolLM2 rotated vs original: max |Δlogit| \(rotated)")
        XCTAssertLessThan(rotated, 1e-3)

        let quarot = try ModelLoader.load(path).model
        var options = QuantizeOptions(method: .quarot, scheme: QuantScheme(weightBits: 16))
        options.centerEmbeddings = false
        installHooks(quarot, online: applyQuaRotRotations(quarot, options: options), activations: nil, keys: nil, values: nil)
        let diff = maxAbsDiff(quarot.forward(ids), reference)
        print("SmolLM2 QuaRot-rotated vs original: max |Δlogit| \(diff)")
        XCTAssertLessThan(diff, 1e-3)
    }
}
