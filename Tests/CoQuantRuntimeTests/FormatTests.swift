@testable import CoQuantModel
@testable import CoQuantQuant
@testable import CoQuantRuntime
import CoQuantTensor
import Foundation
import XCTest

/// Format v2 and the migration from v1: what loads, what runs on the runtime, what is refused and how.
final class FormatTests: XCTestCase {
    let source = fixturesDir + "/tiny-models/c_qwen2_bias_untied"
    var out = ""

    override func setUp() { out = NSTemporaryDirectory() + "coquant-format-\(getpid())-\(UUID().uuidString.prefix(8))" }
    override func tearDown() { try? FileManager.default.removeItem(atPath: out) }

    /// A W4A8 folder of the tiny Qwen2 model (biases, untied head) and the in-memory model that wrote it.
    func quantized(_ scheme: String = "W4A8", embeddings: EmbeddingStorage = .int8) throws -> (LoadedModel, QuantizationResult, QuantizeOptions) {
        let loaded = try ModelLoader.load(source)
        var options = QuantizeOptions(method: .gptq, scheme: try QuantScheme(parsing: scheme))
        options.nsamples = 2
        options.seqlen = 16
        options.embeddings = embeddings
        var g = SeededGenerator(seed: 3)
        let windows = (0..<2).map { _ in (0..<16).map { _ in Int(g.next() % 300) } }
        let result = try quantizeModel(loaded.model, calibration: windows, options: options)
        try installFakeQuantization(loaded.model, scheme: options.scheme, options: options)
        _ = try writeQuantizedFolder(out, loaded: loaded, result: result, options: options)
        return (loaded, result, options)
    }

    func testV2FolderIsSmallTypedAndRunsInPlace() throws {
        let (memory, _, _) = try quantized()
        let config = try XCTUnwrap(try QuantizationConfig.load(out + "/config.json"))
        XCTAssertEqual(config.formatVersion, 2)
        XCTAssertEqual(config.weights.layout, "u4-plane-runs")
        XCTAssertEqual(config.embeddings, .init(format: "int8-row", lmHead: "int8-row"))
        XCTAssertEqual(try config.coquantOptions.decode(QuantizeOptions.self).scheme.name, "W4A8")
        let ckpt = try SafeTensorsCheckpoint(folder: out)
        XCTAssertEqual(ckpt.info("model.embed_tokens.codes")?.dtype, "I8")
        XCTAssertEqual(ckpt.info("lm_head.codes")?.dtype, "I8")
        XCTAssertNil(ckpt.info("model.embed_tokens.weight"))
        let runtime = try assertFolderComputes(memory)
        XCTAssertNotNil(runtime.lmHead?.kernel)
    }

    /// --embeddings int4 and f16: tables stored as 4-bit plane runs / F16, read in place by the row kernels (the
    /// embedding lookup and the untied head), and folder = memory as for int8. W8A8, so that the tables' 4 bits are
    /// their own and not the weights'.
    func testFourBitAndHalfPrecisionEmbeddings() throws {
        for (e, tensor, dtype) in [(EmbeddingStorage.int4, "qweight", "U8"), (.f16, "weight", "F16")] {
            let (memory, _, _) = try quantized("W8A8", embeddings: e)
            let config = try XCTUnwrap(try QuantizationConfig.load(out + "/config.json"))
            XCTAssertEqual(config.embeddings, .init(format: e.rawValue, lmHead: e.rawValue))
            XCTAssertEqual(config.weights.storageBits, 8)
            let ckpt = try SafeTensorsCheckpoint(folder: out)
            for table in ["model.embed_tokens", "lm_head"] {
                XCTAssertEqual(ckpt.info(table + "." + tensor)?.dtype, dtype, "\(e) \(table)")
            }
            let runtime = try assertFolderComputes(memory)
            XCTAssertTrue(runtime.embedTokens.isEmpty)
            let kernels: [any RowTableKernel] = [try XCTUnwrap(runtime.embeddingKernel), try XCTUnwrap(runtime.lmHead?.kernel as? any RowTableKernel)]
            for k in kernels { XCTAssertTrue(e == .int4 ? k is PackedRowsKernel : k is F16RowsKernel, "\(e): \(type(of: k))") }
            // The looked-up rows are the in-memory model's rows exactly.
            let d = memory.model.config.hiddenSize
            var row = [Float](repeating: 0, count: d)
            for r in [0, 7, memory.model.config.vocabSize - 1] {
                row.withUnsafeMutableBufferPointer { kernels[0].row(r, into: $0.baseAddress!) }
                XCTAssertEqual(row, Array(memory.model.embedTokens[(r * d)..<((r + 1) * d)]), "\(e) row \(r)")
            }
            try FileManager.default.removeItem(atPath: out)
        }
    }

    /// The simulator reading the folder computes exactly the in-memory model; the runtime the same function.
    /// Returns the runtime's model.
    func assertFolderComputes(_ memory: LoadedModel, file: StaticString = #filePath, line: UInt = #line) throws -> LlamaModel {
        let ids = [1, 2, 3, 250, 17, 9, 9, 100]
        let simulated = try ModelLoader.load(out)
        try prepareForInference(simulated)
        XCTAssertEqual(simulated.model.forward(ids), memory.model.forward(ids), file: file, line: line)
        let runtime = try Runtime.load(out)
        try prepareForInference(runtime)
        XCTAssertLessThan(relativeToRange(runtime.model.forward(ids), memory.model.forward(ids)), 1e-3, file: file, line: line)
        // Token by token through the KV cache (the decode path: q/k/v and gate/up in one fused loop, biases added
        // after it) computes what the prompt pass computes.
        let cache = runtime.model.makeCache(capacity: ids.count)
        var decoded: [Float] = []
        for id in ids { decoded += runtime.model.forward([id], cache: cache) }
        XCTAssertLessThan(relativeToRange(decoded, runtime.model.forward(ids)), 1e-3, "decode vs prefill", file: file, line: line)
        return runtime.model
    }

    /// --dynamic-int8: a weight-only folder's decoder linears quantize their inputs to int8 per token (the head
    /// does not), and the logits stay close to the exact ones.
    func testDynamicInt8OnWeightOnlyFolders() throws {
        let (memory, _, _) = try quantized("W4A16")
        let exact = try assertFolderComputes(memory)
        XCTAssertNil((exact.layers[0].selfAttn.qProj.kernel as? PackedLinearKernel)?.activation)
        let loaded = try Runtime.load(out, dynamicInt8: true)
        try prepareForInference(loaded)
        let q = try XCTUnwrap(loaded.model.layers[0].mlp.downProj.kernel as? PackedLinearKernel)
        XCTAssertEqual(q.activation, [ActivationBlock(col: 0, count: q.weights.cols, bits: 8)])
        XCTAssertNil((loaded.model.lmHead?.kernel as? PackedLinearKernel)?.activation)
        let ids = [1, 2, 3, 250, 17, 9, 9, 100]
        let e = relativeToRange(loaded.model.forward(ids), exact.forward(ids))
        XCTAssertGreaterThan(e, 0, "int8 activations change the numbers")
        XCTAssertLessThan(e, 0.02)
    }

    /// A folder as CoQuant wrote it before format v2 (bit-packed codes, fp32 embeddings, no version) still loads, in
    /// both modes, and computes what the run computed.
    func testV1FolderStillLoads() throws {
        let (memory, result, options) = try quantized(embeddings: .f32)
        let c = memory.model.config
        // Rewrite the folder in v1's layout: `.qweight` bit-packed row by row, the v1 quantization_config.
        try FileManager.default.removeItem(atPath: out + "/model.safetensors")
        var w = SafeTensorsWriter()
        w.add("model.embed_tokens.weight", memory.model.embedTokens, shape: [c.vocabSize, c.hiddenSize])
        w.add("lm_head.weight", memory.model.lmHead!.weight, shape: [c.vocabSize, c.hiddenSize])
        w.add("model.norm.weight", memory.model.norm, shape: [c.hiddenSize])
        for (i, layer) in memory.model.layers.enumerated() {
            let p = "model.layers.\(i)."
            w.add(p + "input_layernorm.weight", layer.inputLayernorm, shape: [c.hiddenSize])
            w.add(p + "post_attention_layernorm.weight", layer.postAttentionLayernorm, shape: [c.hiddenSize])
            for name in DecoderLayer.linearNames {
                let q = result.packed[p + name]!
                w.add(p + name + ".qweight", bytes: q.packed, shape: [q.rows, q.rowBytes])
                w.add(p + name + ".scales", q.scales, shape: [q.rows, q.groups])
                w.add(p + name + ".zeros", q.zeros, shape: [q.rows, q.groups])
                if let b = layer[linear: name].bias { w.add(p + name + ".bias", b, shape: [b.count]) }
            }
        }
        try w.write(to: out + "/model.safetensors")
        try editConfig { q in
            q["format"] = "coquant-packed-v1"
            q["version"] = nil
            q["embeddings"] = nil
            var weights = q["weights"] as! [String: Any]
            weights["layout"] = nil
            q["weights"] = weights
            q["modules_not_quantized"] = ["model.embed_tokens", "lm_head"]
        }
        XCTAssertEqual(try QuantizationConfig.load(out + "/config.json")?.formatVersion, 1)
        XCTAssertEqual(options.embeddings, .f32)
        let runtime = try assertFolderComputes(memory)
        XCTAssertNotNil(runtime.layers[0].selfAttn.qProj.kernel, "v1 codes are repacked for the runtime")
    }

    func editConfig(_ edit: (inout [String: Any]) -> Void) throws {
        let path = out + "/config.json"
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        var q = json["quantization_config"] as! [String: Any]
        edit(&q)
        json["quantization_config"] = q
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
    }

    func assertRefused(_ runtime: Bool, mentioning words: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try runtime ? Runtime.load(out) : ModelLoader.load(out), file: file, line: line) { e in
            for w in words { XCTAssertTrue("\(e)".contains(w), "\(e) should mention \(w)", file: file, line: line) }
        }
    }

    func testBadFoldersAreRefusedNamingTheProblem() throws {
        _ = try quantized()
        let good = out + "-good"
        try FileManager.default.copyItem(atPath: out, toPath: good)
        defer { try? FileManager.default.removeItem(atPath: good) }
        func restore() throws { try FileManager.default.removeItem(atPath: out); try FileManager.default.copyItem(atPath: good, toPath: out) }

        // A key the migration does not know, in the config or in one of its objects.
        try editConfig { $0["sparsity"] = 0.5 }
        for runtime in [false, true] { assertRefused(runtime, mentioning: ["config.json", "sparsity", "unknown key"]) }
        try restore()
        try editConfig { q in var w = q["weights"] as! [String: Any]; w["zero_point_dtype"] = "int8"; q["weights"] = w }
        assertRefused(true, mentioning: ["weights.zero_point_dtype"])
        try restore()
        // A format from the future.
        try editConfig { $0["version"] = 3; $0["format"] = "coquant-packed-v2" }
        assertRefused(true, mentioning: ["version 3"])
        try restore()
        // Packed tensors that do not match the config: other bits make other row widths.
        try editConfig { q in var w = q["weights"] as! [String: Any]; w["storage_bits"] = 8; q["weights"] = w }
        for runtime in [false, true] { assertRefused(runtime, mentioning: ["qweight", "expected U8"]) }
        try restore()
        // Tables stored otherwise than the config says.
        try editConfig { $0["embeddings"] = ["format": "f16", "lm_head": "f16"] }
        for runtime in [false, true] { assertRefused(runtime, mentioning: ["model.embed_tokens", "stored as int8-row", "says f16"]) }
        try restore()
        // A truncated model file.
        let path = out + "/model.safetensors"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: path))
        for runtime in [false, true] { assertRefused(runtime, mentioning: ["model.safetensors", "past the end"]) }
        try restore()
    }
}
