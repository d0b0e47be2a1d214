import CoQuantModel
import Foundation

// A CoQuant folder (quantized or not) as a plain Hugging Face folder (INTEROP.md, "Dense HF folder"):
//   config.json        the HF config (architectures, rope_theta and rope_parameters, tie_word_embeddings, dtype)
//   model.safetensors  HF names, every tensor in one dtype (F16 by default, F32 with `type: .f32`): each matrix the
//                      values the folder's simulator uses (PackedPlanes / Int8Rows / F16Rows .dequantized(), or the
//                      dense tensor), norms and biases converted
//   tokenizer files    copied as they are
// What a dense model cannot carry is refused before anything is written: quantized activations or KV cache, and the
// online Hadamards / basis changes of QuaRot, ResQ and CoQuant (the folder's weights are only right with them).
// Rotations fused entirely into the weights (no online entries) export. F16 refuses values beyond ±65504.

public struct HFExportReport: Sendable {
    /// (name, dtype, shape) per tensor, in file order.
    public var tensors: [(name: String, dtype: String, shape: [Int])] = []
    /// Matrices that were stored quantized in the folder and written dequantized.
    public var dequantizedMatrices = 0
    public var bytes = 0
}

public enum HFExport {
    /// Writes `folder` as the dense HF folder `out` (atomically; an existing `out` only with `overwrite`).
    public static func write(folder: String, to out: String, type: DenseType = .f16, overwrite: Bool = false) throws -> HFExportReport {
        if FileManager.default.fileExists(atPath: out) && !overwrite {
            throw ModelFileError(out, "already exists (pass --overwrite to replace it)")
        }
        let config = try ModelConfiguration.load(folder + "/config.json")
        let quant = try QuantizationConfig.load(folder + "/config.json")
        let ckpt = try SafeTensorsCheckpoint(folder: folder)
        try refuseWhatDenseCannotCarry(folder, ckpt, config, quant)

        var report = HFExportReport()
        var file = SafeTensorsWriter()
        file.metadata = ["format": "pt", "producer": "coquant"]
        for (name, shape) in hfTensors(config) {
            let (values, wasQuantized) = try denseValues(folder, ckpt, quant, name, shape)
            if wasQuantized { report.dequantizedMatrices += 1 }
            switch type {
            case .f32:
                file.add(name, values, shape: shape)
            case .f16:
                if let i = values.firstIndex(where: { abs($0) > Float(Float16.greatestFiniteMagnitude) }) {
                    throw ModelFileError(folder, "\(name) holds \(values[i]), beyond fp16's range: export --type f32")
                }
                file.add(name, f16: values, shape: shape)
            }
        }
        let configData = try hfConfig(config, dtype: type == .f32 ? "float32" : "float16", quantizationConfig: nil)
        report.tensors = file.tensors
        report.bytes = try writeHFFolder(out, overwrite: overwrite, config: configData, file: file, tokenizerFrom: folder)
        return report
    }

    static func refuseWhatDenseCannotCarry(_ folder: String, _ ckpt: SafeTensorsCheckpoint, _ config: ModelConfiguration,
                                           _ quant: QuantizationConfig?) throws {
        guard let q = quant else { return }
        if let a = q.activations {
            throw ModelFileError(folder, "quantizes activations to \(a.bits) bits (\(q.scheme)): a dense HF folder would lose that and run them in full precision; quantize weight-only (e.g. W4A16) to export")
        }
        if let kv = q.kvCache {
            throw ModelFileError(folder, "quantizes the KV cache to \(kv.bits) bits with its own scales: a dense HF folder would lose that")
        }
        if let what = onlineOperations(q) {
            throw ModelFileError(folder, "was quantized with \(q.method)'s rotations, whose online operations (\(what)) a dense HF folder would lose (transformers would run the model without them)")
        }
    }

    /// What a folder runs online besides its weights (QuaRot's Hadamards, ResQ/CoQuant basis changes), or nil: rotations
    /// that all fused into weights (`--no-online-rotations`) leave a plain model every format carries.
    static func onlineOperations(_ q: QuantizationConfig) -> String? {
        let online = (q.rotation?.online ?? [:]).merging(q.subspace?.online ?? [:]) { a, _ in a }.filter { $0.value != "none" }
        guard !online.isEmpty || q.subspace != nil else { return nil }
        return (online.keys.sorted() + (q.subspace != nil ? ["basis changes"] : [])).joined(separator: ", ")
    }

    /// The values a tensor of the folder stands for, and whether it was stored quantized (a matrix).
    static func denseValues(_ folder: String, _ ckpt: SafeTensorsCheckpoint, _ quant: QuantizationConfig?, _ name: String,
                            _ shape: [Int]) throws -> (values: [Float], quantized: Bool) {
        if shape.count == 2, name.hasSuffix(".weight") {
            let prefix = String(name.dropLast(7)), rows = shape[0], cols = shape[1]
            let table = prefix == "model.embed_tokens" || prefix == "lm_head"
            if let t = try ckpt.int8Rows(prefix, rows: rows, cols: cols) { return (t.dequantized(), true) }
            if let q = quant, let p = try ckpt.packedCodes(prefix, quantization: q, rows: rows, cols: cols) {
                return (p.dequantized(), true)
            }
            if table, let f = try ckpt.f16Rows(prefix, rows: rows, cols: cols) { return (f.dequantized(), true) }
        }
        guard let info = ckpt.info(name) else { throw ModelFileError(folder, "missing tensor '\(name)'") }
        guard info.shape == shape else { throw ModelFileError(folder, "tensor '\(name)' has shape \(info.shape), expected \(shape)") }
        return (try ckpt.floats(name), false)
    }
}

/// The tensors of the HF llama / qwen2 model `config` describes, (name, shape) in file order.
func hfTensors(_ config: ModelConfiguration) -> [(name: String, shape: [Int])] {
    let d = config.hiddenSize, hd = config.headDim, H = config.numAttentionHeads, KV = config.numKeyValueHeads
    let I = config.intermediateSize
    var t: [(String, [Int])] = [("model.embed_tokens.weight", [config.vocabSize, d])]
    for l in 0..<config.numHiddenLayers {
        let p = "model.layers.\(l)."
        t.append((p + "input_layernorm.weight", [d]))
        for (m, rows) in [("q_proj", H * hd), ("k_proj", KV * hd), ("v_proj", KV * hd)] {
            t.append((p + "self_attn.\(m).weight", [rows, d]))
            if config.qkvBias { t.append((p + "self_attn.\(m).bias", [rows])) }
        }
        t.append((p + "self_attn.o_proj.weight", [d, H * hd]))
        if config.oBias { t.append((p + "self_attn.o_proj.bias", [d])) }
        t.append((p + "post_attention_layernorm.weight", [d]))
        t += [(p + "mlp.gate_proj.weight", [I, d]), (p + "mlp.up_proj.weight", [I, d]), (p + "mlp.down_proj.weight", [d, I])]
    }
    t.append(("model.norm.weight", [d]))
    if !config.tieWordEmbeddings { t.append(("lm_head.weight", [config.vocabSize, d])) }
    return t
}

/// config.json for transformers: the canonical HF config with both rope_theta and rope_parameters (MLXExport's),
/// `dtype` / `torch_dtype`, and an optional quantization_config.
func hfConfig(_ c: ModelConfiguration, dtype: String, quantizationConfig: [String: Any]?) throws -> Data {
    var json = try JSONSerialization.jsonObject(with: MLXExport.mlxConfig(c, quantization: nil)) as! [String: Any]
    json["torch_dtype"] = dtype
    json["dtype"] = dtype
    if let q = quantizationConfig { json["quantization_config"] = q }
    return try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])
}

/// Writes the folder `out` (atomically; an existing one only with `overwrite`): config.json, model.safetensors and the
/// tokenizer files of `folder`. Returns model.safetensors' size in bytes.
func writeHFFolder(_ out: String, overwrite: Bool, config: Data, file: SafeTensorsWriter, tokenizerFrom folder: String) throws -> Int {
    try writeFolderAtomically(out, overwrite: overwrite) { dir in
        try config.write(to: URL(fileURLWithPath: dir + "/config.json"))
        try file.write(to: dir + "/model.safetensors")
        try copyTokenizerFiles(from: folder, to: dir)
    }
    return (try? FileManager.default.attributesOfItem(atPath: out + "/model.safetensors")[.size] as? Int) ?? 0
}

func copyTokenizerFiles(from folder: String, to dir: String) throws {
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "chat_template.jinja"] where FileManager.default.fileExists(atPath: folder + "/" + name) {
        try FileManager.default.copyItem(atPath: folder + "/" + name, toPath: dir + "/" + name)
    }
}
