import Foundation
import XCTest

// What the export tests of the command line share. This target links no CoQuant module, so files are read here with
// a few lines each.

extension CLITests {
    /// `coquant quantize MODEL --method quarot --scheme W4A4KV4` into path("w4a4"): a folder with quantized
    /// activations and KV cache, which the weight-only exports refuse.
    func quantizedW4A4(_ model: String, calibration: String) throws -> String {
        let w4a4 = path("w4a4")
        assertSucceeded(try coquant(["quantize", model, "--method", "quarot", "--scheme", "W4A4KV4", "--nsamples", "2", "--seqlen", "16",
                                     "--calib-file", calibration, "--out", w4a4]))
        return w4a4
    }
}

/// A safetensors file read whole: enough for the few tensors a test looks at.
struct TensorFile {
    let data: Data
    let header: [String: [String: Any]]
    let start: Int

    init(_ path: String) throws {
        data = try XCTUnwrap(FileManager.default.contents(atPath: path), "\(path) is missing")
        let n = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        header = try XCTUnwrap(JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any])
            .compactMapValues { $0 as? [String: Any] }
        start = 8 + n
    }

    func raw<T>(_ name: String, dtype: String, as: T.Type) throws -> (values: [T], shape: [Int]) {
        let e = try XCTUnwrap(header[name], "no tensor \(name)")
        XCTAssertEqual(e["dtype"] as? String, dtype, name)
        let o = try XCTUnwrap(e["data_offsets"] as? [Int]), shape = try XCTUnwrap(e["shape"] as? [Int])
        return (data.subdata(in: (start + o[0])..<(start + o[1])).withUnsafeBytes { Array($0.bindMemory(to: T.self)) }, shape)
    }

    /// s·(q − z) of a folder's 4-bit `<prefix>` in its v2 layout (PlaneLayout.swift: each row in runs of 32 columns,
    /// padded to 32, one 16-byte plane a run, byte j = code(j) | code(j + 16) << 4), with a scale and zero per group of
    /// `groupSize` columns, or per row when nil.
    func folderValues4Bit(_ prefix: String, rows: Int, cols: Int, groupSize: Int?) throws -> [Float] {
        let (bytes, shape) = try raw(prefix + ".qweight", dtype: "U8", as: UInt8.self)
        let padded = (cols + 31) / 32 * 32, g = groupSize ?? cols, groups = cols / g
        XCTAssertEqual(shape, [rows, padded / 2], prefix)
        let scales = try raw(prefix + ".scales", dtype: "F32", as: Float.self).values
        let zeros = try raw(prefix + ".zeros", dtype: "F32", as: Float.self).values
        return (0..<(rows * cols)).map { i in
            let r = i / cols, c = i % cols, k = r * groups + c / g
            let b = bytes[r * padded / 2 + c / 32 * 16 + c % 16]
            let q = c % 32 < 16 ? b & 15 : b >> 4
            return scales[k] * (Float(q) - zeros[k])
        }
    }
}

extension CLITests {
    /// A random llama (4 layers, hidden 256, FFN 512, 4 heads sharing 1 KV head, vocab 300, tied) with the byte-level
    /// tokenizer: the tiny fixtures are 64 wide, and the K-quants need inputs that are multiples of 256.
    func wideModelWithTokenizer() throws -> String {
        let folder = path("wide-llama")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let d = 256, f = 512, layers = 4, vocab = 300, hd = 64
        let config: [String: Any] = [
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d, "intermediate_size": f,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": hd,
            "vocab_size": vocab, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        ]
        try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
            .write(to: URL(fileURLWithPath: folder + "/config.json"))
        var shapes: [(String, [Int])] = [("model.embed_tokens.weight", [vocab, d]), ("model.norm.weight", [d])]
        for l in 0..<layers {
            let p = "model.layers.\(l)."
            shapes += [(p + "input_layernorm.weight", [d]), (p + "post_attention_layernorm.weight", [d]),
                       (p + "self_attn.q_proj.weight", [4 * hd, d]), (p + "self_attn.k_proj.weight", [hd, d]),
                       (p + "self_attn.v_proj.weight", [hd, d]), (p + "self_attn.o_proj.weight", [d, 4 * hd]),
                       (p + "mlp.gate_proj.weight", [f, d]), (p + "mlp.up_proj.weight", [f, d]), (p + "mlp.down_proj.weight", [d, f])]
        }
        // xorshift, so the model is the same on every machine; norms at 1, matrices uniform with a few larger columns
        // (real activations have outlier channels, which is what makes the solvers differ from rounding).
        var state: UInt64 = 0x9E3779B97F4A7C15
        func uniform() -> Float {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return Float(state >> 40) / Float(1 << 24) * 2 - 1
        }
        var header: [String: Any] = [:], body = Data(), offset = 0
        for (name, shape) in shapes {
            let n = shape.reduce(1, *)
            var values: [Float] = shape.count == 1 ? Array(repeating: 1, count: n)
                : (0..<n).map { i in uniform() * (i % shape[1] % 37 == 0 ? 0.3 : 0.06) }
            // A few rows of tiny weights, whose K-quant d is subnormal in fp16 (as some rows of real models are).
            if name == "model.layers.0.self_attn.k_proj.weight" { for i in 0..<(8 * shape[1]) { values[i] *= 0.002 } }
            values.withUnsafeBytes { body.append(contentsOf: $0) }
            header[name] = ["dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]]
            offset += 4 * n
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        var file = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(json)
        file.append(body)
        try file.write(to: URL(fileURLWithPath: folder + "/model.safetensors"))
        try FileManager.default.copyItem(atPath: fixturesDir + "/tiny-models/byte_level_tokenizer.json", toPath: folder + "/tokenizer.json")
        return folder
    }
}
