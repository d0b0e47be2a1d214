import ArgumentParser
import CoQuantExport
import CoQuantModel
import Foundation

enum ExportFormat: String, ExpressibleByArgument, CaseIterable {
    case gguf, mlx, hf
    case compressedTensors = "compressed-tensors"
}

enum ExportType: String, ExpressibleByArgument, CaseIterable {
    case auto, f32, f16
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a CoQuant folder in a format other tools load.",
        discussion: """
        gguf: one file that llama.cpp (and Ollama, LM Studio, …) loads, with the tokenizer, the chat template and the
        architecture's metadata. Each quantized linear keeps its solved codes as the GGUF block type of its grid:
        4-bit symmetric → Q4_0, 4-bit asymmetric → Q4_1, 5-bit → Q5_0, 8-bit → Q8_0, in 32-column blocks that repeat
        their group's scale (groups of 32, 64, 128 or per channel). A GGUF stores scales as fp16: quantize with a
        llama.cpp file type as the scheme (--scheme Q4_0, Q8_0, Q4_K_M, Q3_K_M, …) to solve every linear on exactly
        the block grid llama-quantize would store it in (K-quants: 256-column super-blocks with integer sub-block
        scales) and export bit for bit; other folders have their scales rounded, and the summary says by how much.
        --type f32 | f16 writes the dequantized weights instead.

        A GGUF cannot carry quantized activations or KV cache, the online rotations of quarot/resq/coquant, act-order
        with dynamic groups (--static-groups exports), or 3-bit codes: such folders are refused, and nothing is written.

        mlx: a folder (config.json, model.safetensors, tokenizer) that mlx-lm loads with QuantizedLinear layers holding
        the solved codes of 2-, 4- or 8-bit folders, and the folder's own fp32 scales (groups of 32, 64 or 128; per
        channel repeats the row's). int8 embeddings become 8-bit layers. Refused as for gguf (activations, KV cache,
        rotations, act-order with dynamic groups), and other code widths.

        compressed-tensors: a folder transformers and vLLM load (quant_method compressed-tensors, format
        pack-quantized, weight-only): each linear's solved 4- or 8-bit codes packed into int32 words, the folder's
        fp32 scales (groups or per channel) and, for asymmetric grids, its zero points; embeddings and the LM head
        dense F32. Refused as for mlx (activations, KV cache, rotations, act-order with dynamic groups), and widths other
        than 4 and 8.

        hf: the dequantized model as a plain Hugging Face folder (every matrix the values the folder evaluates
        with), F16 by default or --type f32. Refused when the folder quantizes activations or the KV cache or
        needs online rotations, which a dense model would lose.

        Examples:
          coquant quantize models/SmolLM2-135M-Instruct.Q4_1.gguf --method gptq --scheme Q4_0 --out out/smollm2-q4_0
          coquant export out/smollm2-q4_0 --format gguf --out out/smollm2-q4_0.gguf
          coquant export out/smollm2-q4_0 --format mlx --out out/smollm2-q4_0-mlx
          coquant export out/smollm2-q4_0 --format compressed-tensors --out out/smollm2-q4_0-ct
          coquant export out/smollm2-q4_0 --format hf --type f32 --out out/smollm2-q4_0-hf
        """)

    @Argument(help: "A CoQuant folder (quantized or full precision).")
    var folder: String

    @Option(help: "Output format: gguf (one file), mlx, compressed-tensors or hf (folders).")
    var format: ExportFormat = .gguf

    @Option(name: .shortAndLong, help: "Output file (gguf) or folder (mlx, compressed-tensors, hf).")
    var out: String

    @Option(help: "gguf: auto (each tensor as the block type its codes fit) or f32 | f16 (every matrix dequantized); hf: f16 (auto) or f32.")
    var type: ExportType = .auto

    @Flag(help: "Replace OUT if it exists.")
    var overwrite = false

    @OptionGroup var output: OutputOptions

    func validate() throws {
        try checkCreatable(out, flag: "--out")
        if (format == .mlx || format == .compressedTensors) && type != .auto {
            throw ValidationError("--type \(type.rawValue) applies to --format gguf and hf: a\(format == .mlx ? "n mlx" : " compressed-tensors") folder keeps the codes (export --format hf --type \(type.rawValue) for a dense folder)")
        }
    }

    struct MLXSummary: Codable {
        let path: String
        let format: String
        let bytes: Int
        let bits: Int?
        let groupSize: Int?
        let quantizedMatrices: Int
        let tensors: Int
    }

    struct Summary: Codable {
        let path: String
        let format: String
        let bytes: Int
        let fileType: UInt32
        let tensorTypes: [String: Int]
        let roundedParameters: Int
        let parameters: Int
        let largestRelativeRounding: Double
    }

    func run() throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir) else { throw RunError("\(folder): no such folder") }
        guard isDir.boolValue else {
            throw RunError("\(folder): export reads a CoQuant or Hugging Face folder; this is a file (a GGUF needs no export)")
        }
        try FileManager.default.createDirectory(at: URL(fileURLWithPath: out).deletingLastPathComponent(), withIntermediateDirectories: true)
        if format == .mlx { return try runMLX() }
        if format == .compressedTensors { return try runCompressedTensors() }
        if format == .hf { return try runHF() }
        let dense: DenseType? = type == .auto ? nil : DenseType(rawValue: type.rawValue)
        let report = try GGUFExport.write(folder: folder, to: out, dense: dense, overwrite: overwrite)
        var types: [String: Int] = [:]
        for t in report.tensors { types[t.type.name, default: 0] += 1 }
        let line = "wrote \(out) (\(String(format: "%.1f", Double(report.bytes) / 1e6)) MB): \(report.typeSummary)"
        let rounding = report.roundedParameters == 0
            ? "all \(report.parameters) block scales are fp16 values: the file holds exactly the folder's weights"
            : "\(report.roundedParameters) of \(report.parameters) block scales rounded to fp16 (largest relative change \(String(format: "%.2g", report.largestRounding))); quantize with a GGUF scheme (--scheme Q4_0, Q4_K_M, …) to solve on the file's grid"
        try emit(Summary(path: out, format: format.rawValue, bytes: report.bytes, fileType: report.fileType, tensorTypes: types,
                         roundedParameters: report.roundedParameters, parameters: report.parameters,
                         largestRelativeRounding: report.largestRounding),
                 line, textOnly: report.parameters > 0 ? [rounding] : [])
    }

    func runMLX() throws {
        let report = try MLXExport.write(folder: folder, to: out, overwrite: overwrite)
        let codes = report.bits.map { "linears \($0)-bit in groups of \(report.groupSize!), " } ?? ""
        let what = report.quantizedMatrices == 0 ? "all F32"
            : "\(report.quantizedMatrices) quantized (\(codes)fp32 scales), the rest F32"
        let line = "wrote \(out) (\(String(format: "%.1f", Double(report.bytes) / 1e6)) MB): \(report.tensors.count) tensors, \(what)"
        try emit(MLXSummary(path: out, format: format.rawValue, bytes: report.bytes, bits: report.bits, groupSize: report.groupSize,
                            quantizedMatrices: report.quantizedMatrices, tensors: report.tensors.count), line)
    }

    struct CompressedTensorsSummary: Codable {
        let path: String
        let format: String
        let bytes: Int
        let bits: Int
        let groupSize: Int?
        let symmetric: Bool
        let quantizedLinears: Int
        let tensors: Int
    }

    func runCompressedTensors() throws {
        let r = try CompressedTensorsExport.write(folder: folder, to: out, overwrite: overwrite)
        let grid = "\(r.bits)-bit \(r.symmetric ? "symmetric" : "asymmetric"), \(r.groupSize.map { "groups of \($0)" } ?? "per channel")"
        let line = "wrote \(out) (\(String(format: "%.1f", Double(r.bytes) / 1e6)) MB): \(r.tensors.count) tensors, \(r.quantizedLinears) linears pack-quantized (\(grid), fp32 scales), the rest F32"
        try emit(CompressedTensorsSummary(path: out, format: format.rawValue, bytes: r.bytes, bits: r.bits, groupSize: r.groupSize,
                                          symmetric: r.symmetric, quantizedLinears: r.quantizedLinears, tensors: r.tensors.count), line)
    }

    struct HFSummary: Codable {
        let path: String
        let format: String
        let bytes: Int
        let dtype: String
        let dequantizedMatrices: Int
        let tensors: Int
    }

    func runHF() throws {
        let dtype: DenseType = type == .f32 ? .f32 : .f16
        let r = try HFExport.write(folder: folder, to: out, type: dtype, overwrite: overwrite)
        let line = "wrote \(out) (\(String(format: "%.1f", Double(r.bytes) / 1e6)) MB): \(r.tensors.count) tensors, all \(dtype.rawValue.uppercased())\(r.dequantizedMatrices > 0 ? " (\(r.dequantizedMatrices) matrices dequantized)" : "")"
        try emit(HFSummary(path: out, format: format.rawValue, bytes: r.bytes, dtype: dtype.rawValue,
                           dequantizedMatrices: r.dequantizedMatrices, tensors: r.tensors.count), line)
    }

    /// `--json`: the summary on stdout and `line` on stderr; otherwise `line` (and `textOnly`) on stdout.
    func emit(_ summary: some Encodable, _ line: String, textOnly: [String] = []) throws {
        if output.json {
            try printJSON(summary)
            printErr(line)
        } else {
            print(line)
            for l in textOnly { print(l) }
        }
    }
}
