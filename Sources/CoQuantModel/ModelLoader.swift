import Foundation

/// A model and its tokenizer, loaded from an HF folder or a GGUF file.
public struct LoadedModel: @unchecked Sendable {
    public let model: LlamaModel
    public let tokenizer: Tokenizer?
    public let path: String
    public let format: String           // "safetensors" or "gguf"
    /// Storage type of each source tensor (for `inspect`): checkpoint name → (dtype, shape).
    public let tensorTable: [(name: String, dtype: String, shape: [Int])]
    /// `config.json["quantization_config"]` of a folder CoQuant wrote (nil for an ordinary model).
    public var quantizationConfig: QuantizationConfig? = nil
    /// Whether the packed tensors run as kernels (the Runtime) rather than dequantized to fp32 (the simulator).
    public var packedKernels = false
}

/// How a quantized folder's packed tensors become kernels: the Runtime provides one, made from the folder's
/// configuration (`PackedKernels.Factory`). Without it they are dequantized to fp32 on load and run through the
/// simulator.
public struct PackedKernels {
    public typealias Factory = (ModelConfiguration, QuantizationConfig) -> PackedKernels
    public var linear: (_ name: String, _ weights: PackedPlanes) throws -> any LinearKernel
    public var rows: (_ name: String, _ table: RowTable) throws -> any RowTableKernel
    /// The packed KV cache of a scheme with quantized keys and values.
    public var kvCache: KVCacheFormat?
    public init(linear: @escaping (String, PackedPlanes) throws -> any LinearKernel,
                rows: @escaping (String, RowTable) throws -> any RowTableKernel, kvCache: KVCacheFormat? = nil) {
        self.linear = linear
        self.rows = rows
        self.kvCache = kvCache
    }
}

public enum ModelLoader {
    /// Loads `path`: a folder with config.json + safetensors, or a `.gguf` file. Weights are converted to fp32.
    /// `requireTokenizer` makes a missing tokenizer an error (commands that read or write text need one).
    /// `kernels`: run a quantized folder's packed tensors in place through the kernels it makes (ignored for other
    /// models).
    public static func load(_ path: String, requireTokenizer: Bool = false, kernels: PackedKernels.Factory? = nil) throws -> LoadedModel {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelFileError(path, "no such file or folder")
        }
        let loaded = isDir.boolValue ? try loadFolder(path, kernels: kernels) : try loadGGUF(path)
        if requireTokenizer && loaded.tokenizer == nil {
            throw ModelFileError(path, "has no tokenizer (expected tokenizer.json in the folder, or tokenizer.ggml.* metadata in the GGUF)")
        }
        return loaded
    }

    // MARK: Hugging Face folder

    static func loadFolder(_ folder: String, kernels factory: PackedKernels.Factory?) throws -> LoadedModel {
        let config = try ModelConfiguration.load(folder + "/config.json")
        let ckpt = try SafeTensorsCheckpoint(folder: folder)
        let quantization = try QuantizationConfig.load(folder + "/config.json")
        let kernels = quantization.flatMap { q in factory.map { $0(config, q) } }
        // The tables' tensors pick how they load; they must be what the config says they are.
        if let e = quantization?.embeddings {
            for prefix in ["model.embed_tokens", "lm_head"] {
                if let kind = ckpt.tableStorage(prefix), kind != e.format {
                    throw ModelFileError(folder, "\(prefix) is stored as \(kind) but quantization_config.embeddings.format says \(e.format)")
                }
            }
        }
        func tensor(_ name: String, _ shape: [Int]) throws -> [Float] {
            guard let info = ckpt.info(name) else {
                throw ModelFileError(ckpt.files.first!.path, "missing tensor '\(name)' (config.json expects \(shape))")
            }
            guard info.shape == shape else {
                throw ModelFileError(folder, "tensor '\(name)' has shape \(info.shape) but config.json implies \(shape)")
            }
            return try ckpt.floats(name)
        }
        /// The packed form of `<prefix>.weight` [rows, cols]: v2 plane runs in place, or v1 codes repacked.
        func planes(_ prefix: String, _ shape: [Int]) throws -> PackedPlanes? {
            guard let q = quantization, shape.count == 2 else { return nil }
            return try ckpt.packedCodes(prefix, quantization: q, rows: shape[0], cols: shape[1])
        }
        let model = try build(config, source: folder, fetch: { name, shape, required in
            if name.hasSuffix(".weight"), shape.count == 2 {
                let prefix = String(name.dropLast(7))
                if let rows = try ckpt.int8Rows(prefix, rows: shape[0], cols: shape[1]) { return rows.dequantized() }
                if let p = try planes(prefix, shape) { return p.dequantized() }
            }
            return required || ckpt.info(name) != nil ? try tensor(name, shape) : nil
        }, kernel: kernels.map { k in { name, shape in
            let prefix = String(name.dropLast(7))
            if let rows = try ckpt.int8Rows(prefix, rows: shape[0], cols: shape[1]) { return try k.rows(prefix, .int8(rows)) }
            let table = prefix == "model.embed_tokens" || prefix == "lm_head"
            if table, let rows = try ckpt.f16Rows(prefix, rows: shape[0], cols: shape[1]) { return try k.rows(prefix, .f16(rows)) }
            guard let p = try planes(prefix, shape) else { return nil }
            return table ? try k.rows(prefix, .planes(p)) : try k.linear(prefix, p)
        } })
        model.kvCacheFormat = kernels?.kvCache
        // ResQ / CoQuant per-layer bases: the online residual basis changes, when the folder has them.
        let d = config.hiddenSize
        for i in model.layers.indices {
            for (k, name) in ["basis_change_1", "basis_change_2"].enumerated() where ckpt.info("model.layers.\(i).\(name).weight") != nil {
                let b = Linear(weight: try tensor("model.layers.\(i).\(name).weight", [d, d]), inFeatures: d, outFeatures: d)
                if k == 0 { model.layers[i].basisChange1 = b } else { model.layers[i].basisChange2 = b }
            }
        }
        let tokenizerPath = folder + "/tokenizer.json"
        var tokenizer: Tokenizer?
        if FileManager.default.fileExists(atPath: tokenizerPath) {
            let cfg = folder + "/tokenizer_config.json"
            tokenizer = try Tokenizer(tokenizerJSON: tokenizerPath,
                                      tokenizerConfig: FileManager.default.fileExists(atPath: cfg) ? cfg : nil)
        }
        let table = ckpt.tensorNames.compactMap { n in ckpt.info(n).map { (name: n, dtype: $0.dtype, shape: $0.shape) } }
        return LoadedModel(model: model, tokenizer: tokenizer, path: folder, format: quantization == nil ? "safetensors" : "coquant",
                           tensorTable: table, quantizationConfig: quantization, packedKernels: kernels != nil)
    }

    /// Builds the model from HF-named tensors. `fetch(name, shape, required)` returns nil only for optional tensors
    /// that are absent (biases, an untied head that is really tied).
    /// `kernel(name, shape)` may hold a weight matrix as a kernel instead (then it is never fetched as fp32).
    static func build(_ c: ModelConfiguration, source: String, fetch rawFetch: (String, [Int], Bool) throws -> [Float]?,
                      kernel: ((String, [Int]) throws -> (any LinearKernel)?)? = nil) throws -> LlamaModel {
        func fetch(_ name: String, _ shape: [Int], _ required: Bool) throws -> [Float]? {
            let values = try rawFetch(name, shape, required)
            if let values, !values.allSatisfy(\.isFinite) { throw ModelFileError(source, "tensor '\(name)' contains NaN or Inf") }
            return values
        }
        let d = c.hiddenSize, H = c.numAttentionHeads, KV = c.numKeyValueHeads, hd = c.headDim, F = c.intermediateSize
        func linear(_ name: String, _ out: Int, _ inp: Int, bias: Bool) throws -> Linear {
            let b = bias ? try fetch(name + ".bias", [out], true) : nil
            if let k = try kernel?(name + ".weight", [out, inp]) { return Linear(kernel: k, bias: b, inFeatures: inp, outFeatures: out) }
            let w = try fetch(name + ".weight", [out, inp], true)!
            return Linear(weight: w, bias: b, inFeatures: inp, outFeatures: out)
        }
        var layers: [DecoderLayer] = []
        for i in 0..<c.numHiddenLayers {
            let p = "model.layers.\(i)."
            let attn = Attention(
                qProj: try linear(p + "self_attn.q_proj", H * hd, d, bias: c.qkvBias),
                kProj: try linear(p + "self_attn.k_proj", KV * hd, d, bias: c.qkvBias),
                vProj: try linear(p + "self_attn.v_proj", KV * hd, d, bias: c.qkvBias),
                oProj: try linear(p + "self_attn.o_proj", d, H * hd, bias: c.oBias))
            let mlp = MLP(gateProj: try linear(p + "mlp.gate_proj", F, d, bias: false),
                          upProj: try linear(p + "mlp.up_proj", F, d, bias: false),
                          downProj: try linear(p + "mlp.down_proj", d, F, bias: false))
            layers.append(DecoderLayer(inputLayernorm: try fetch(p + "input_layernorm.weight", [d], true)!, selfAttn: attn,
                                       postAttentionLayernorm: try fetch(p + "post_attention_layernorm.weight", [d], true)!,
                                       mlp: mlp))
        }
        let embedKernel = try kernel?("model.embed_tokens.weight", [c.vocabSize, d]) as? any RowTableKernel
        let embed = embedKernel == nil ? try fetch("model.embed_tokens.weight", [c.vocabSize, d], true)! : []
        var head: Linear?
        if !c.tieWordEmbeddings {
            if let k = try kernel?("lm_head.weight", [c.vocabSize, d]) {
                head = Linear(kernel: k, inFeatures: d, outFeatures: c.vocabSize)
            } else if let w = try fetch("lm_head.weight", [c.vocabSize, d], false) {
                head = Linear(weight: w, inFeatures: d, outFeatures: c.vocabSize)
            }
        }
        let model = LlamaModel(config: c, embedTokens: embed, layers: layers, norm: try fetch("model.norm.weight", [d], true)!,
                               lmHead: head)
        model.embeddingKernel = embedKernel
        return model
    }

    // MARK: GGUF

    static func loadGGUF(_ path: String) throws -> LoadedModel {
        let gguf = try GGUFFile(path: path)
        let config = try configuration(gguf)
        let hd = config.headDim
        // GGUF name for each HF name; llama.cpp's converter permuted q/k rows of `llama` models for its interleaved
        // RoPE, which we undo (qwen2 GGUFs keep HF order).
        let permuteQK = config.modelType == "llama"
        let model = try build(config, source: path) { name, shape, required in
            let ggufName = ggufTensorName(name)
            guard let info = gguf.tensor(named: ggufName) else {
                if required { throw ModelFileError(path, "missing tensor '\(ggufName)' (\(name))") }
                return nil
            }
            guard info.shape == shape || (shape.count == 1 && info.elementCount == shape[0]) else {
                throw ModelFileError(path, "tensor '\(ggufName)' has shape \(info.shape) but the metadata implies \(shape)")
            }
            var w = try gguf.dequantize(info)
            if permuteQK && (name.hasSuffix("q_proj.weight") || name.hasSuffix("k_proj.weight")
                             || name.hasSuffix("q_proj.bias") || name.hasSuffix("k_proj.bias")) {
                w = unpermuteRows(w, rows: shape[0], cols: shape.count == 2 ? shape[1] : 1, headDim: hd)
            }
            return w
        }
        var tokenizer: Tokenizer?
        if gguf.metadata["tokenizer.ggml.tokens"] != nil { tokenizer = try Tokenizer(gguf: gguf) }
        let table = gguf.tensors.map { (name: $0.name, dtype: $0.type.name, shape: $0.shape) }
        return LoadedModel(model: model, tokenizer: tokenizer, path: path, format: "gguf", tensorTable: table)
    }

    /// The GGUF name of an HF tensor name (`model.layers.3.mlp.down_proj.weight` → `blk.3.ffn_down.weight`).
    public static func ggufTensorName(_ hf: String) -> String {
        let map = ["self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                   "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                   "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"]
        switch hf {
        case "model.embed_tokens.weight": return "token_embd.weight"
        case "model.norm.weight": return "output_norm.weight"
        case "lm_head.weight": return "output.weight"
        default:
            let parts = hf.split(separator: ".").map(String.init)   // model.layers.i.<module...>.weight
            let module = parts[3..<(parts.count - 1)].joined(separator: ".")
            return "blk.\(parts[2]).\(map[module] ?? module).\(parts.last!)"
        }
    }

    /// The order llama.cpp's converter gives a `llama` model's q/k rows: GGUF row h·hd + 2i + j is HF row
    /// h·hd + j·hd/2 + i (interleaved RoPE pairs instead of rotate-half halves). Whole rows move, so it commutes with
    /// any quantization along the row.
    public static func ggufRowOrder(rows: Int, headDim hd: Int) -> [Int] {
        var order = [Int](repeating: 0, count: rows)
        for h in 0..<(rows / hd) {
            for i in 0..<(hd / 2) {
                for j in 0..<2 { order[h * hd + 2 * i + j] = h * hd + j * (hd / 2) + i }
            }
        }
        return order
    }

    /// llama.cpp stores each head's rows as interleaved pairs (2i, 2i+1); HF's rotate-half wants (i, i + hd/2).
    static func unpermuteRows(_ w: [Float], rows: Int, cols: Int, headDim hd: Int) -> [Float] {
        var out = w
        let half = hd / 2
        for h in 0..<(rows / hd) {
            for i in 0..<half {
                for j in 0..<2 {
                    let src = (h * hd + 2 * i + j) * cols, dst = (h * hd + j * half + i) * cols
                    for c in 0..<cols { out[dst + c] = w[src + c] }
                }
            }
        }
        return out
    }

    /// The HF configuration implied by a GGUF's `<arch>.*` metadata.
    static func configuration(_ g: GGUFFile) throws -> ModelConfiguration {
        guard let arch = g.architecture else { throw ModelFileError(g.path, "has no general.architecture") }
        guard ModelConfiguration.supportedTypes.contains(arch) else {
            throw ModelFileError(g.path, "unsupported architecture \"\(arch)\" (supported: \(ModelConfiguration.supportedTypes.joined(separator: ", ")))")
        }
        func int(_ key: String) throws -> Int {
            guard let v = g.metadata["\(arch).\(key)"]?.int else { throw ModelFileError(g.path, "missing metadata \(arch).\(key)") }
            return v
        }
        let d = try int("embedding_length"), H = try int("attention.head_count")
        guard g.tensor(named: "rope_freqs.weight") == nil else {
            throw ModelFileError(g.path, "has rope_freqs.weight (llama3-style RoPE scaling in GGUF form), which is not supported yet")
        }
        let vocab = g.metadata["\(arch).vocab_size"]?.int ?? g.metadata["tokenizer.ggml.tokens"]?.array?.count
            ?? g.tensor(named: "token_embd.weight")?.shape.first ?? 0
        let eps = g.metadata["\(arch).attention.layer_norm_rms_epsilon"]?.double ?? 1e-5
        let config = ModelConfiguration(
            modelType: arch, hiddenSize: d, intermediateSize: try int("feed_forward_length"),
            numHiddenLayers: try int("block_count"), numAttentionHeads: H,
            numKeyValueHeads: g.metadata["\(arch).attention.head_count_kv"]?.int ?? H,
            headDim: g.metadata["\(arch).attention.key_length"]?.int ?? d / H,
            rmsNormEps: Double(Float(eps)), ropeTheta: g.metadata["\(arch).rope.freq_base"]?.double ?? 10000,
            vocabSize: vocab, maxPositionEmbeddings: g.metadata["\(arch).context_length"]?.int ?? 2048,
            tieWordEmbeddings: g.tensor(named: "output.weight") == nil,
            bosTokenId: g.metadata["tokenizer.ggml.bos_token_id"]?.int,
            eosTokenIds: g.metadata["tokenizer.ggml.eos_token_id"]?.int.map { [$0] } ?? [])
        try config.validate(file: g.path)
        return config
    }
}
