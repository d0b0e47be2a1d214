import ArgumentParser
import CoQuantExport
import CoQuantModel
import Foundation

enum ExportFormat: String, ExpressibleByArgument, CaseIterable {
    case gguf, mlx
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
        their group's scale (groups of 32, 64, 128 or per channel). A GGUF stores scales as fp16: quantize with
        --scheme Q4_0 | Q5_0 | Q8_0 to solve on exactly that grid and export bit for bit; other folders have their
        scales rounded, and the summary says by how much. --type f32 | f16 writes the dequantized weights instead.

        A GGUF cannot carry quantized activations or KV cache, the online rotations of quarot/resq/coquant, act-order
        with groups, or 3-bit codes: such folders are refused, and nothing is written.

        mlx: a folder (config.json, model.safetensors, tokenizer) that mlx-lm loads with QuantizedLinear layers holding
        the solved codes of 2-, 4- or 8-bit folders, and the folder's own fp32 scales (groups of 32, 64 or 128; per
        channel repeats the row's). int8 embeddings become 8-bit layers. Refused as for gguf (activations, KV cache,
        rotations, act-order with groups), and other code widths.

        Examples:
          coquant quantize models/SmolLM2-135M-Instruct.Q4_1.gguf --method gptq --scheme Q4_0 --out out/smollm2-q4_0
          coquant export out/smollm2-q4_0 --format gguf --out out/smollm2-q4_0.gguf
          coquant export out/smollm2-q4_0 --format mlx --out out/smollm2-q4_0-mlx
        """)

    @Argument(help: "A CoQuant folder (quantized or full precision).")
    var folder: String

    @Option(help: "Output format: gguf (one file) or mlx (a folder).")
    var format: ExportFormat = .gguf

    @Option(name: .shortAndLong, help: "Output file (gguf) or folder (mlx).")
    var out: String

    @Option(help: "gguf only. auto: each tensor as the block type its codes fit; f32 | f16: every matrix dequantized.")
    var type: ExportType = .auto

    @Flag(help: "Replace OUT if it exists.")
    var overwrite = false

    @OptionGroup var output: OutputOptions

    func validate() throws {
        try checkCreatable(out, flag: "--out")
        if format == .mlx && type != .auto {
            throw ValidationError("--type \(type.rawValue) applies to --format gguf: an mlx folder keeps the codes (export a dense folder from an unquantized model)")
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
        let dense: DenseType? = type == .auto ? nil : DenseType(rawValue: type.rawValue)
        let report = try GGUFExport.write(folder: folder, to: out, dense: dense, overwrite: overwrite)
        var types: [String: Int] = [:]
        for t in report.tensors { types[t.type.name, default: 0] += 1 }
        let line = "wrote \(out) (\(String(format: "%.1f", Double(report.bytes) / 1e6)) MB): \(report.typeSummary)"
        let rounding = report.roundedParameters == 0
            ? "all \(report.parameters) block scales are fp16 values: the file holds exactly the folder's weights"
            : "\(report.roundedParameters) of \(report.parameters) block scales rounded to fp16 (largest relative change \(String(format: "%.2g", report.largestRounding))); quantize with --scheme Q4_0 | Q5_0 | Q8_0 to solve on the file's grid"
        if output.json {
            try printJSON(Summary(path: out, format: format.rawValue, bytes: report.bytes, fileType: report.fileType, tensorTypes: types,
                                  roundedParameters: report.roundedParameters, parameters: report.parameters,
                                  largestRelativeRounding: report.largestRounding))
            printErr(line)
        } else {
            print(line)
            if report.parameters > 0 { print(rounding) }
        }
    }

    func runMLX() throws {
        let report = try MLXExport.write(folder: folder, to: out, overwrite: overwrite)
        let codes = report.bits.map { "linears \($0)-bit in groups of \(report.groupSize!), " } ?? ""
        let what = report.quantizedMatrices == 0 ? "all F32"
            : "\(report.quantizedMatrices) quantized (\(codes)fp32 scales), the rest F32"
        let line = "wrote \(out) (\(String(format: "%.1f", Double(report.bytes) / 1e6)) MB): \(report.tensors.count) tensors, \(what)"
        if output.json {
            try printJSON(MLXSummary(path: out, format: format.rawValue, bytes: report.bytes, bits: report.bits, groupSize: report.groupSize,
                                     quantizedMatrices: report.quantizedMatrices, tensors: report.tensors.count))
            printErr(line)
        } else {
            print(line)
        }
    }
}
