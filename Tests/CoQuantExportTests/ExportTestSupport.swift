@testable import CoQuantModel
import CoQuantQuant
import CoQuantTensor
import Foundation
import XCTest

/// What the exporters' tests share: the tiny fixture models, a temporary folder per test, and quantized folders of
/// the tiny Qwen2 model written in it.
class ExportFolderTestCase: XCTestCase {
    let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/tiny-models").path
    var dir = ""

    override func setUp() { dir = NSTemporaryDirectory() + "coquant-\(type(of: self))-\(getpid())-\(UUID().uuidString.prefix(8))" }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// A quantized folder of the tiny Qwen2 model (q/k/v biases, untied head, int8 tables), written as a run writes it.
    func quantizedFolder(_ scheme: String, symmetric: Bool, actOrder: Bool = false) throws -> String {
        let loaded = try ModelLoader.load(fixtures + "/c_qwen2_bias_untied")
        var options = QuantizeOptions(method: actOrder ? .gptq : .rtn, scheme: try QuantScheme(parsing: scheme))
        options.actOrder = actOrder
        options.nsamples = 1
        options.seqlen = 16
        options.weightSymmetric = symmetric
        options.embeddings = .int8
        var g = SeededGenerator(seed: 3)
        let windows = [(0..<16).map { _ in Int(g.next() % 300) }]
        let result = try quantizeModel(loaded.model, calibration: windows, options: options)
        try installFakeQuantization(loaded.model, scheme: options.scheme, options: options)
        let out = dir + "/" + scheme + (actOrder ? "-act-order" : "")
        _ = try writeQuantizedFolder(out, loaded: loaded, result: result, options: options)
        return out
    }
}

/// The few lines of safetensors reading the tests need (SafeTensorsFile has no I32 or U32 matrices): any tensor's raw
/// elements, checked against the dtype expected.
struct TestTensorFile {
    let data: Data
    let header: [String: [String: Any]]
    let start: Int

    init(_ path: String) throws {
        data = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        header = try XCTUnwrap(JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any])
            .compactMapValues { $0 as? [String: Any] }
        start = 8 + n
    }

    func raw<T>(_ name: String, dtype: String, as: T.Type) throws -> (values: [T], shape: [Int]) {
        let e = try XCTUnwrap(header[name], "no tensor \(name)")
        XCTAssertEqual(e["dtype"] as? String, dtype, name)
        let o = try XCTUnwrap(e["data_offsets"] as? [Int]), shape = try XCTUnwrap(e["shape"] as? [Int])
        let bytes = data.subdata(in: (start + o[0])..<(start + o[1]))
        return (bytes.withUnsafeBytes { Array($0.bindMemory(to: T.self)) }, shape)
    }

    func floats(_ name: String) throws -> [Float] { try raw(name, dtype: "F32", as: Float.self).values }
}
