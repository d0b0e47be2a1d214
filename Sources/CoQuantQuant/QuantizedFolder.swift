import CoQuantModel
import CoQuantTensor
import Foundation

// The quantized folder of a run (format in CoQuantModel/QuantizedCheckpoint.swift) and how a loaded folder gets its
// inference-time fake quantization and online rotations back.

/// Writes config.json (with quantization_config), model.safetensors (packed linears in the v2 plane runs, the
/// embeddings/head as --embeddings says, the fp32 rest) and the tokenizer. Returns the size of model.safetensors.
public func writeQuantizedFolder(_ out: String, loaded: LoadedModel, result: QuantizationResult, options: QuantizeOptions) throws -> Int {
    let m = loaded.model, c = m.config
    var bytes = 0
    try writeFolderAtomically(out, overwrite: true) { dir in
        var w = SafeTensorsWriter()
        w.metadata = ["format": "pt", "producer": "coquant"]
        func addPacked(_ name: String, _ packed: PackedLinear) {
            let layout = PlaneLayout(cols: packed.cols, bits: packed.bits, groupIndex: packed.groupIndex, groupBits: packed.groupBits)
            w.add(name + ".qweight", bytes: layout.pack(rows: packed.rows, cols: packed.cols) { Int(packed.code($0, $1)) },
                  shape: [packed.rows, layout.rowBytes])
            w.add(name + ".scales", packed.scales, shape: [packed.rows, packed.groups])
            w.add(name + ".zeros", packed.zeros, shape: [packed.rows, packed.groups])
            let plain = (0..<packed.cols).map { Int32($0 / (packed.cols / packed.groups)) }
            if packed.groupIndex != plain { w.add(name + ".g_idx", packed.groupIndex, shape: [packed.cols]) }
            if let widths = packed.groupBits { w.add(name + ".group_bits", widths.map(Int32.init), shape: [widths.count]) }
        }
        // The run's own int8 / int4 tables (quantizing the dequantized values again could move a scale by an ulp).
        func addTable(_ name: String, _ values: [Float], _ table: Int8Rows?) throws {
            switch options.embeddings ?? .f32 {
            case .int8:
                guard let t = table else {
                    throw ModelFileError(out, "the run did not round its embeddings to int8 (a result from before --embeddings?)")
                }
                w.add(name + ".codes", bytes: t.codes.map { UInt8(bitPattern: $0) }, shape: [c.vocabSize, c.hiddenSize], dtype: "I8")
                w.add(name + ".row_scales", t.scales, shape: [c.vocabSize])
            case .int4:
                guard let p = result.packed[name] else { throw ModelFileError(out, "the run did not round \(name) to int4") }
                addPacked(name, p)
            case .f16:
                w.add(name + ".weight", f16: values, shape: [c.vocabSize, c.hiddenSize])
            case .f32:
                w.add(name + ".weight", values, shape: [c.vocabSize, c.hiddenSize])
            }
        }
        try addTable("model.embed_tokens", m.embedTokens, result.embeddings)
        w.add("model.norm.weight", m.norm, shape: [c.hiddenSize])
        if let head = m.lmHead { try addTable("lm_head", head.weight, result.lmHead) }
        for (i, layer) in m.layers.enumerated() {
            let p = "model.layers.\(i)."
            w.add(p + "input_layernorm.weight", layer.inputLayernorm, shape: [c.hiddenSize])
            w.add(p + "post_attention_layernorm.weight", layer.postAttentionLayernorm, shape: [c.hiddenSize])
            for name in DecoderLayer.linearNames {
                let linear = layer[linear: name]
                if let packed = result.packed[p + name] {
                    addPacked(p + name, packed)
                } else {
                    w.add(p + name + ".weight", linear.weight, shape: [linear.outFeatures, linear.inFeatures])
                }
                if let b = linear.bias { w.add(p + name + ".bias", b, shape: [b.count]) }
            }
            // ResQ / CoQuant: the online residual basis changes (fp32, inputs quantized to residual_bits at inference) and
            // the per-KV-head key rotation applied after RoPE.
            for (name, b) in [("basis_change_1", layer.basisChange1), ("basis_change_2", layer.basisChange2)] {
                if let b { w.add(p + name + ".weight", b.weight, shape: [b.outFeatures, b.inFeatures]) }
            }
            if let online = result.subspace {
                w.add(p + "self_attn.key_rotation", online.keyRotations[i].flatMap { $0 },
                      shape: [c.numKeyValueHeads, c.headDim, c.headDim])
            }
        }
        try w.write(to: dir + "/model.safetensors")
        bytes = (try? FileManager.default.attributesOfItem(atPath: dir + "/model.safetensors")[.size] as? Int) ?? 0

        var config = try JSONSerialization.jsonObject(with: JSONEncoder().encode(c)) as! [String: Any]
        config["tie_word_embeddings"] = m.lmHead == nil
        config["architectures"] = [c.modelType == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"]
        config["torch_dtype"] = "float32"
        let q = try quantizationConfig(result: result, options: options, config: c)
        config["quantization_config"] = try JSONSerialization.jsonObject(with: JSONEncoder().encode(q))
        let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: dir + "/config.json"))

        try loaded.tokenizer?.write(tokenizerJSON: dir + "/tokenizer.json", tokenizerConfig: dir + "/tokenizer_config.json")
    }
    return bytes
}

/// The folder's `quantization_config` (format v2) for a run's result.
func quantizationConfig(result: QuantizationResult, options: QuantizeOptions, config c: ModelConfiguration) throws -> QuantizationConfig {
    let s = options.scheme
    let embeddings = options.embeddings ?? .f32
    var subspace: QuantizationConfig.Subspace?
    if let sub = options.subspace, let bases = result.bases {
        subspace = .init(
            objective: bases.objective.rawValue, granularity: bases.granularity.rawValue,
            highFraction: sub.highFraction, highBits: sub.highBits, highChannels: bases.high, highChannelsPerHead: bases.headHigh,
            kvWeightAware: sub.kvWeightAware, embeddingsCentered: options.centerEmbeddings,
            highBlock: "the last high_channels input columns of q/k/v/gate/up, the last high_channels_per_head of every head for o_proj; down_proj uniform",
            storage: "<linear>.group_bits gives each column group's code width: the low block at bits, the high block at high_bits (down_proj: bits)",
            online: ["basis_change": bases.granularity == .perLayer ? "basis_change_1/2, inputs " + ((sub.residualBits ?? 8) < 16 ? "int\(sub.residualBits ?? 8) per token" : "fp32") : "none",
                     "keys_queries": "self_attn.key_rotation per KV head after RoPE" + (s.kvBits < 16 ? " (int8 per tensor)" : "")
                        + (bases.keyBasis == .pooled ? "; one key basis per layer, pooled over its KV heads" : "; each KV head's own key basis"),
                     "down_proj_input": "hadamard(intermediate_size)"])
    }
    return QuantizationConfig(
        format: "coquant-packed-v2", version: QuantizationConfig.currentVersion,
        method: options.method.rawValue, solver: options.solver.rawValue, scheme: s.name,
        weights: .init(bits: s.weightBits, storageBits: result.packed.first { $0.key.hasPrefix("model.layers.") }?.value.bits ?? s.weightBits,
                       groupSize: s.weightGroupSize ?? -1, symmetric: options.weightSymmetric,
                       grid: try options.weightGrid().scheme.configName, mseClip: options.weightClip, actOrder: options.actOrder,
                       percdamp: options.percdamp, targets: DecoderLayer.linearNames, layout: "u4-plane-runs"),
        embeddings: .init(format: embeddings.rawValue, lmHead: embeddings.rawValue),
        modulesNotQuantized: embeddings == .f32 ? ["model.embed_tokens", "lm_head"] : [],
        calibration: .init(dataset: "wikitext2-train-prefix", nsamples: options.nsamples, seqlen: options.seqlen, seed: options.seed),
        activations: s.activationBits < 16
            ? .init(bits: s.activationBits, downProjBits: options.downProjActivationBits ?? s.activationBits,
                    clipRatio: options.activationClipRatio,
                    targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]) : nil,
        kvCache: s.kvBits < 16 ? .init(bits: s.kvBits, headDim: c.headDim, clipRatio: options.kvClipRatio) : nil,
        rotation: options.method == .quarot
            ? .init(residual: "random-hadamard", seed: options.seed, normsFused: true, embeddingsCentered: options.centerEmbeddings,
                    valueHeads: "hadamard(head_dim), fused",
                    online: options.onlineRotations == false
                        ? ["down_proj_input": "none", "queries_keys": "none", "o_proj_input": "none"]
                        : ["down_proj_input": "hadamard(intermediate_size)", "queries_keys": "hadamard(head_dim) per head after RoPE",
                           "o_proj_input": options.headMixing == true ? "hadamard(num_attention_heads) across heads" : "none"]) : nil,
        subspace: subspace,
        coquantOptions: try OpaqueJSON(encoding: options))
}

/// Re-installs what a quantized folder's `quantization_config` asks for at inference (activation and KV fake
/// quantization). A model without one is left as it is.
public func prepareForInference(_ loaded: LoadedModel) throws {
    guard let q = loaded.quantizationConfig else { return }
    guard let options = try? q.coquantOptions.decode(QuantizeOptions.self) else {
        throw ModelFileError(loaded.path + "/config.json", "quantization_config.coquant_options is missing or malformed")
    }
    var subspace: SubspaceOnline?
    if options.method.usesSubspace {
        let c = loaded.model.config, hd = c.headDim, KV = c.numKeyValueHeads
        guard let sub = q.subspace else {
            throw ModelFileError(loaded.path + "/config.json", "quantization_config.subspace is missing")
        }
        let ckpt = try SafeTensorsCheckpoint(folder: loaded.path)
        let rotations: [[[Float]]] = try (0..<c.numHiddenLayers).map { l in
            let name = "model.layers.\(l).self_attn.key_rotation"
            guard ckpt.info(name)?.shape == [KV, hd, hd] else {
                throw ModelFileError(loaded.path, "missing tensor '\(name)' [\(KV), \(hd), \(hd)]")
            }
            let all = try ckpt.floats(name)
            return (0..<KV).map { Array(all[($0 * hd * hd)..<(($0 + 1) * hd * hd)]) }
        }
        subspace = SubspaceOnline(config: c, keyRotations: rotations, high: sub.highChannels, headHigh: sub.highChannelsPerHead)
    }
    // The folder stores the fp32 key rotation; installFakeQuantization rounds it to int8 here exactly as it did in
    // the quantizing run (config.json's "int8 per tensor" describes the rotation as applied). Packed kernels quantize
    // their own inputs and the KV cache, so with them only the other quantizers and the online ops go into the hook.
    try installFakeQuantization(loaded.model, scheme: options.scheme, options: options, subspace: subspace,
                                runtime: loaded.packedKernels)
}

/// Per-layer checkpoints of a run in progress (`OUT.partial/`), so `--resume` continues after the last finished
/// layer: `state.json` (the options, which must match), `layer-<i>.safetensors` (packed linears) and
/// `layer-<i>.json` (their reports). Each file is written atomically.
public struct LayerCheckpointStore {
    public let folder: String
    let options: QuantizeOptions

    public init(output: String, options: QuantizeOptions) {
        folder = output + ".partial"
        self.options = options
    }

    func encodedOptions() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return try e.encode(options)
    }

    /// Starts a fresh checkpoint folder (removing an old one).
    public func start() throws {
        try? FileManager.default.removeItem(atPath: folder)
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try encodedOptions().write(to: URL(fileURLWithPath: folder + "/state.json"), options: .atomic)
        } catch {
            throw ModelFileError(folder, "cannot create the checkpoint folder: \(error.failureReason)")
        }
    }

    public func save(layer l: Int, _ done: FinishedLayer) throws {
        var w = SafeTensorsWriter()
        var bits: [String: String] = [:]
        for (name, p) in done.packed {
            w.add(name + ".qweight", bytes: p.packed, shape: [p.rows, p.rowBytes])
            w.add(name + ".scales", p.scales, shape: [p.rows, p.groups])
            w.add(name + ".zeros", p.zeros, shape: [p.rows, p.groups])
            w.add(name + ".g_idx", p.groupIndex, shape: [p.cols])
            if let widths = p.groupBits { w.add(name + ".group_bits", widths.map(Int32.init), shape: [widths.count]) }
            bits[name] = "\(p.bits) \(p.rows) \(p.cols)"
        }
        w.metadata = bits
        try w.write(to: folder + "/layer-\(l).safetensors")
        try JSONEncoder().encode(done.reports).write(to: URL(fileURLWithPath: folder + "/layer-\(l).json"), options: .atomic)
    }

    /// The finished layers 0..<k of an interrupted run with the same options.
    public func load() throws -> [FinishedLayer] {
        let state = folder + "/state.json"
        guard let saved = FileManager.default.contents(atPath: state) else {
            throw ModelFileError(folder, "no checkpoint to resume from (run without --resume first)")
        }
        guard saved == (try encodedOptions()) else {
            throw ModelFileError(state, "the checkpoint was made with other options; run again without --resume")
        }
        var layers: [FinishedLayer] = []
        while FileManager.default.fileExists(atPath: folder + "/layer-\(layers.count).json") {
            let l = layers.count
            let path = folder + "/layer-\(l).safetensors"
            let file = try SafeTensorsFile(path: path)
            let ckpt = try SafeTensorsCheckpoint(files: [file])
            var packed: [String: PackedLinear] = [:]
            for (name, dims) in file.metadata {
                let v = dims.split(separator: " ").compactMap { Int($0) }
                guard v.count == 3, let p = try ckpt.packedLinear(name, bits: v[0], rows: v[1], cols: v[2]) else {
                    throw ModelFileError(path, "malformed checkpoint entry \(name)")
                }
                packed[name] = p
            }
            guard let data = FileManager.default.contents(atPath: folder + "/layer-\(l).json"),
                  let reports = try? JSONDecoder().decode([LinearReport].self, from: data) else {
                throw ModelFileError(folder + "/layer-\(l).json", "malformed layer report")
            }
            layers.append(FinishedLayer(packed: packed, reports: reports))
        }
        return layers
    }

    public func remove() { try? FileManager.default.removeItem(atPath: folder) }
}
