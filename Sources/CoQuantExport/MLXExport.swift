import CoQuantModel
import Foundation

// A CoQuant folder (quantized or not) as a model folder mlx-lm loads (INTEROP.md; mlx-lm utils.py load_model):
//   config.json        the HF config (rope_theta and rope_parameters, tie_word_embeddings, model_type llama | qwen2)
//                      with "quantization": {"group_size": G, "bits": B} in place of CoQuant's quantization_config
//   model.safetensors  HF names; each quantized matrix W [out, in] as
//                        <name>.weight  U32 [out, in·b/32]   codes LSB-first along the input, 32/b codes per word
//                        <name>.scales  F32 [out, in/g]      s of the folder's group holding the MLX group
//                        <name>.biases  F32 [out, in/g]      −s·z
//                      so that mlx's scales·q + biases is our s·(q − z); norms, biases and dense matrices F32
//   tokenizer files    copied as they are
// mlx-lm reads each layer's b and g back from these shapes (infer_quant_config), so tables need not match the
// linears: an int8-row table becomes 8-bit with q = code + 128, biases = −128·s (g the largest of 128/64/32 dividing
// its width); an int4-g32 table 4-bit with g = 32; f16 / f32 tables dense. The linears' G is the largest of 128, 64,
// 32 for which every MLX group lies inside one of the folder's groups (each MLX group repeats that group's s and z,
// so per-channel folders repeat the row's). Scales and biases are F32: a QuantizedEmbedding returns rows in its
// scales' dtype, so F32 keeps mlx's whole forward in F32, as our simulator runs; fp16 would round every scale.
//
// What mlx-lm cannot run is refused before anything is written: quantized activations or KV cache (QuantizedLinear
// is weight-only), the online Hadamards and basis changes of QuaRot/ResQ/CoQuant, mixed-width column groups, groups
// that are not whole MLX groups of consecutive columns (act-order with groups), code widths other than 2, 4 and 8
// (the ones that fill a uint32 word), and Qwen2 with head_dim ≠ hidden/heads (mlx-lm's qwen2 derives it).

public struct MLXExportReport: Sendable {
    /// (name, dtype, shape) per tensor, in file order.
    public var tensors: [(name: String, dtype: String, shape: [Int])] = []
    /// The linears' code width and MLX group size; nil for a dense export.
    public var bits: Int?
    public var groupSize: Int?
    /// Matrices written as MLX quantized (linears and tables).
    public var quantizedMatrices = 0
    /// Size of model.safetensors.
    public var bytes = 0
}

public enum MLXExport {
    /// MLX's group sizes, largest first.
    static let groupSizes = [128, 64, 32]

    /// Writes `folder` as the mlx-lm folder `out` (atomically; an existing `out` only with `overwrite`).
    public static func write(folder: String, to out: String, overwrite: Bool = false) throws -> MLXExportReport {
        if FileManager.default.fileExists(atPath: out) && !overwrite {
            throw ModelFileError(out, "already exists (pass --overwrite to replace it)")
        }
        let config = try ModelConfiguration.load(folder + "/config.json")
        let quant = try QuantizationConfig.load(folder + "/config.json")
        let ckpt = try SafeTensorsCheckpoint(folder: folder)
        try refuseWhatMLXCannotRun(folder, config, quant)

        let d = config.hiddenSize, hd = config.headDim, H = config.numAttentionHeads, KV = config.numKeyValueHeads
        let I = config.intermediateSize
        var linears: [(prefix: String, rows: Int, cols: Int)] = []
        for l in 0..<config.numHiddenLayers {
            let p = "model.layers.\(l)."
            linears += [(p + "self_attn.q_proj", H * hd, d), (p + "self_attn.k_proj", KV * hd, d),
                        (p + "self_attn.v_proj", KV * hd, d), (p + "self_attn.o_proj", d, H * hd),
                        (p + "mlp.gate_proj", I, d), (p + "mlp.up_proj", I, d), (p + "mlp.down_proj", d, I)]
        }

        // One code width and group size for all linears, as the config states them.
        var planes: [String: PackedPlanes] = [:]
        for (prefix, rows, cols) in linears {
            if let q = quant, let p = try ckpt.packedCodes(prefix, quantization: q, rows: rows, cols: cols) { planes[prefix] = p }
        }
        var report = MLXExportReport()
        var G: Int?
        if !planes.isEmpty, let q = quant {
            guard [2, 4, 8].contains(q.weights.bits) else {
                throw ModelFileError(folder, "has \(q.weights.bits)-bit codes: this exporter packs 2, 4 or 8 bits per code (whole codes per uint32 word, as mlx-lm's QuantizedLinear reads them)")
            }
            if let prefix = planes.keys.sorted().first(where: { ckpt.info($0 + ".group_bits") != nil }) {
                throw ModelFileError(folder, "\(prefix) mixes code widths across column groups: an MLX layer has one width")
            }
            G = try groupSize(folder, linears.compactMap { l in planes[l.prefix].map { (l.prefix, $0) } })
            report.bits = q.weights.bits
            report.groupSize = G
        }

        var file = SafeTensorsWriter()
        file.metadata = ["format": "mlx", "producer": "coquant"]
        func dense(_ name: String, _ shape: [Int]) throws {
            guard let info = ckpt.info(name) else { throw ModelFileError(folder, "missing tensor '\(name)'") }
            guard info.shape == shape else { throw ModelFileError(folder, "tensor '\(name)' has shape \(info.shape), expected \(shape)") }
            file.add(name, try ckpt.floats(name), shape: shape)
        }
        // mlx-lm quantizes nothing without a "quantization" entry: a folder with only its tables packed states theirs.
        var stated: (bits: Int, groupSize: Int)? = report.bits.map { ($0, G!) }
        func quantized(_ prefix: String, _ m: MLXQuantized) {
            file.add(prefix + ".weight", words: m.words, shape: [m.rows, m.cols * m.bits / 32])
            file.add(prefix + ".scales", m.scales, shape: [m.rows, m.cols / m.groupSize])
            file.add(prefix + ".biases", m.biases, shape: [m.rows, m.cols / m.groupSize])
            report.quantizedMatrices += 1
            if stated == nil { stated = (m.bits, m.groupSize) }
        }
        func table(_ prefix: String) throws {
            let rows = config.vocabSize
            if let t = try ckpt.int8Rows(prefix, rows: rows, cols: d) {
                if let g = groupSizes.first(where: { d % $0 == 0 }) {
                    quantized(prefix, int8Table(t, groupSize: g))
                } else {
                    file.add(prefix + ".weight", t.dequantized(), shape: [rows, d])      // no MLX group fits the width
                }
            } else if let q = quant, let p = try ckpt.packedCodes(prefix, quantization: q, rows: rows, cols: d) {
                quantized(prefix, try MLXQuantized(p, bits: 4, groupSize: try groupSize(folder, [(prefix, p)], sizes: [32]), folder, prefix))
            } else if let f = try ckpt.f16Rows(prefix, rows: rows, cols: d) {
                file.add(prefix + ".weight", f.dequantized(), shape: [rows, d])
            } else {
                try dense(prefix + ".weight", [rows, d])
            }
        }

        try table("model.embed_tokens")
        for l in 0..<config.numHiddenLayers {
            let p = "model.layers.\(l)."
            try dense(p + "input_layernorm.weight", [d])
            try dense(p + "post_attention_layernorm.weight", [d])
            for (prefix, rows, cols) in linears where prefix.hasPrefix(p) {
                if let pl = planes[prefix], let B = report.bits, let G {
                    quantized(prefix, try MLXQuantized(pl, bits: B, groupSize: G, folder, prefix))
                } else {
                    try dense(prefix + ".weight", [rows, cols])
                }
                let attention = prefix.contains("self_attn.")
                if attention && (prefix.hasSuffix("o_proj") ? config.oBias : config.qkvBias) { try dense(prefix + ".bias", [rows]) }
            }
        }
        try dense("model.norm.weight", [d])
        if !config.tieWordEmbeddings { try table("lm_head") }

        let configData = try mlxConfig(config, quantization: stated)
        try writeFolderAtomically(out, overwrite: overwrite) { dir in
            try configData.write(to: URL(fileURLWithPath: dir + "/config.json"))
            try file.write(to: dir + "/model.safetensors")
            for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                         "chat_template.jinja"] where FileManager.default.fileExists(atPath: folder + "/" + name) {
                try FileManager.default.copyItem(atPath: folder + "/" + name, toPath: dir + "/" + name)
            }
        }
        report.tensors = file.tensors
        report.bytes = (try? FileManager.default.attributesOfItem(atPath: out + "/model.safetensors")[.size] as? Int) ?? 0
        return report
    }

    static func refuseWhatMLXCannotRun(_ folder: String, _ config: ModelConfiguration, _ quant: QuantizationConfig?) throws {
        if config.modelType == "qwen2" && config.headDim * config.numAttentionHeads != config.hiddenSize {
            throw ModelFileError(folder, "is a qwen2 model with head_dim \(config.headDim) ≠ hidden_size / num_attention_heads: mlx-lm's qwen2 derives head_dim and would build other shapes")
        }
        guard let q = quant else { return }
        if let a = q.activations {
            throw ModelFileError(folder, "quantizes activations to \(a.bits) bits (\(q.scheme)): mlx-lm's QuantizedLinear is weight-only and would run them in full precision; quantize weight-only (e.g. W4A16) to export")
        }
        if let kv = q.kvCache {
            throw ModelFileError(folder, "quantizes the KV cache to \(kv.bits) bits with its own scales: an mlx-lm folder cannot carry that (mlx-lm's KV quantization is a run-time option)")
        }
        if let what = HFExport.onlineOperations(q) {
            throw ModelFileError(folder, "was quantized with \(q.method)'s rotations, whose online operations (\(what)) mlx-lm's llama and qwen2 do not run (it would run the model without them)")
        }
    }

    /// The largest of `sizes` for which every MLX group of every matrix lies inside one of its folder groups.
    static func groupSize(_ folder: String, _ matrices: [(String, PackedPlanes)], sizes: [Int] = groupSizes) throws -> Int {
        var fits = sizes
        for (prefix, p) in matrices {
            guard p.cols % 32 == 0 else {
                throw ModelFileError(folder, "\(prefix) has \(p.cols) input columns, not a multiple of 32: MLX groups are 32, 64 or 128 columns")
            }
            let group = p.columnGroups
            fits.removeAll { g in p.cols % g != 0 || stride(from: 0, to: p.cols, by: g).contains { s in group[s..<(s + g)].contains { $0 != group[s] } } }
            if fits.isEmpty {
                let s = stride(from: 0, to: p.cols, by: 32).first { s in group[s..<(s + 32)].contains { $0 != group[s] } } ?? 0
                throw ModelFileError(folder, "\(prefix): columns \(s)…\(s + 31) belong to different groups (act-order with groups, or groups that are not whole multiples of 32 columns), which MLX's groups of consecutive columns cannot express")
            }
        }
        return fits[0]
    }

    /// An int8-row table as MLX 8-bit: q = code + 128 ∈ [1, 255], every group the row's s, biases −128·s.
    static func int8Table(_ t: Int8Rows, groupSize g: Int) -> MLXQuantized {
        let groups = t.cols / g
        let words = pack(rows: t.rows, cols: t.cols, bits: 8) { r, c in Int(t.codes[r * t.cols + c]) + 128 }
        let scales = t.scales.flatMap { Array(repeating: $0, count: groups) }
        return MLXQuantized(rows: t.rows, cols: t.cols, bits: 8, groupSize: g, words: words, scales: scales,
                            biases: scales.map { -128 * $0 })
    }

    /// Codes [rows, cols] (each below 2^bits) as mlx's words [rows, cols·bits/32]: column c of a row is bits
    /// (c mod n)·bits… of word c / n, n = 32/bits codes per word, lowest first.
    static func pack(rows: Int, cols: Int, bits: Int, code: (Int, Int) throws -> Int) rethrows -> [UInt32] {
        precondition([2, 4, 8].contains(bits) && cols * bits % 32 == 0)
        let n = 32 / bits, perRow = cols / n
        var words = [UInt32](repeating: 0, count: rows * perRow)
        for r in 0..<rows {
            for c in 0..<cols { words[r * perRow + c / n] |= UInt32(try code(r, c)) << UInt32(c % n * bits) }
        }
        return words
    }

    /// The inverse of `pack`: codes [rows, cols].
    static func unpack(_ words: [UInt32], rows: Int, cols: Int, bits: Int) -> [Int] {
        let n = 32 / bits, perRow = cols / n, mask = UInt32(1) << UInt32(bits) &- 1
        return (0..<(rows * cols)).map { i in
            let r = i / cols, c = i % cols
            return Int(words[r * perRow + c / n] >> UInt32(c % n * bits) & mask)
        }
    }

    /// config.json: the canonical HF config (as QuantizedFolder writes it, without quantization_config) for mlx-lm.
    static func mlxConfig(_ c: ModelConfiguration, quantization: (bits: Int, groupSize: Int)?) throws -> Data {
        var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(c)) as! [String: Any]
        json["architectures"] = [c.modelType == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"]
        json["torch_dtype"] = "float32"
        // transformers v5 reads θ (and any scaling) from rope_parameters, mlx-lm from rope_theta / rope_scaling.
        var rope = c.ropeScaling ?? RopeScaling(ropeType: "default")
        rope.ropeTheta = c.ropeTheta
        json["rope_parameters"] = try JSONSerialization.jsonObject(with: JSONEncoder().encode(rope))
        if let q = quantization { json["quantization"] = ["group_size": q.groupSize, "bits": q.bits] }
        return try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])
    }
}

/// One matrix in MLX's affine layout: value[r, c] = scales[r, c / g]·q[r, c] + biases[r, c / g].
struct MLXQuantized {
    let rows: Int, cols: Int, bits: Int, groupSize: Int
    let words: [UInt32]      // [rows, cols·bits/32]
    let scales: [Float]      // [rows, cols/groupSize]
    let biases: [Float]      // [rows, cols/groupSize]

    init(rows: Int, cols: Int, bits: Int, groupSize: Int, words: [UInt32], scales: [Float], biases: [Float]) {
        self.rows = rows; self.cols = cols; self.bits = bits; self.groupSize = groupSize
        self.words = words; self.scales = scales; self.biases = biases
    }

    /// A packed linear whose groups hold whole MLX groups of `groupSize` (MLXExport.groupSize checked that).
    init(_ p: PackedPlanes, bits: Int, groupSize g: Int, _ folder: String, _ prefix: String) throws {
        let top = 1 << bits
        let words = try MLXExport.pack(rows: p.rows, cols: p.cols, bits: bits) { r, c in
            let q = p.code(r, c)
            guard q < top else { throw ModelFileError(folder, "\(prefix) holds code \(q), which does not fit \(bits) bits") }
            return q
        }
        let group = p.columnGroups, G = p.groups, per = p.cols / g
        var scales = [Float](repeating: 0, count: p.rows * per), biases = scales
        for r in 0..<p.rows {
            for k in 0..<per {
                let s = p.scales[r * G + group[k * g]], z = p.zeros[r * G + group[k * g]]
                scales[r * per + k] = s
                biases[r * per + k] = -s * z
            }
        }
        self.init(rows: p.rows, cols: p.cols, bits: bits, groupSize: g, words: words, scales: scales, biases: biases)
    }
}
