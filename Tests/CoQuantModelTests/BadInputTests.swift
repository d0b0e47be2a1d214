import Foundation
import XCTest
@testable import CoQuantModel

/// Every bad checkpoint stops with one ModelFileError naming the file and the problem.
final class BadInputTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "coquant-bad-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func safetensors(_ header: String, dataBytes: Int, headerLength: UInt64? = nil) -> Data {
        var d = Data()
        withUnsafeBytes(of: (headerLength ?? UInt64(header.utf8.count)).littleEndian) { d.append(contentsOf: $0) }
        d.append(contentsOf: Array(header.utf8))
        d.append(Data(count: dataBytes))
        return d
    }

    func expectError(_ path: String, contains problem: String, file: StaticString = #filePath, line: UInt = #line,
                     _ body: () throws -> Void) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            guard let e = error as? ModelFileError else { return XCTFail("not a ModelFileError: \(error)", file: file, line: line) }
            XCTAssertTrue(e.file.hasPrefix(path) || path.hasPrefix(e.file), "error names \(e.file), expected \(path)", file: file, line: line)
            XCTAssertTrue(e.problem.contains(problem), "'\(e.problem)' should mention '\(problem)'", file: file, line: line)
        }
    }

    func testCorruptSafetensors() throws {
        let p = dir + "/x.safetensors"
        let cases: [(Data, String)] = [
            (Data([1, 2, 3]), "too short"),
            (safetensors("{}", dataBytes: 0, headerLength: 1 << 40), "past the end"),
            (safetensors("not json", dataBytes: 0), "not a JSON object"),
            (safetensors(#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, dataBytes: 8), "past the end"),
            (safetensors(#"{"w":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#, dataBytes: 8), "unsupported dtype Q9"),
            (safetensors(#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, dataBytes: 8), "needs 12 bytes"),
            (safetensors(#"{"w":{"dtype":"F32","shape":[2]}}"#, dataBytes: 8), "malformed"),
        ]
        for (bytes, problem) in cases {
            try bytes.write(to: URL(fileURLWithPath: p))
            expectError(p, contains: problem) { _ = try SafeTensorsFile(path: p) }
        }
    }

    /// A copy of the tiny Llama folder with one thing broken.
    func brokenFolder(config edit: (inout [String: Any]) -> Void) throws -> String {
        let src = fixturesDir + "/tiny-models/a_llama_gqa_tied"
        let out = dir + "/model"
        try? FileManager.default.removeItem(atPath: out)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: src + "/model.safetensors", toPath: out + "/model.safetensors")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "/config.json"))) as! [String: Any]
        edit(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: out + "/config.json"))
        return out
    }

    func testConfigProblems() throws {
        var m = try brokenFolder { $0["model_type"] = "gpt2" }
        expectError(m + "/config.json", contains: "unsupported architecture \"gpt2\"") { _ = try ModelLoader.load(m) }
        m = try brokenFolder { $0["hidden_size"] = 96 }
        expectError(m, contains: "shape") { _ = try ModelLoader.load(m) }
        m = try brokenFolder { $0.removeValue(forKey: "vocab_size") }
        expectError(m + "/config.json", contains: "vocab_size") { _ = try ModelLoader.load(m) }
        m = try brokenFolder { $0["num_key_value_heads"] = 3 }
        expectError(m + "/config.json", contains: "not a multiple") { _ = try ModelLoader.load(m) }
        m = try brokenFolder { $0["rope_parameters"] = ["rope_type": "yarn", "rope_theta": 10000.0] }
        expectError(m + "/config.json", contains: "yarn") { _ = try ModelLoader.load(m) }
        m = try brokenFolder { $0["num_hidden_layers"] = 5 }
        expectError(m + "/model.safetensors", contains: "missing tensor 'model.layers.4") { _ = try ModelLoader.load(m) }
        m = try brokenFolder { _ in }
        expectError(m, contains: "no tokenizer") { _ = try ModelLoader.load(m, requireTokenizer: true) }
        try FileManager.default.removeItem(atPath: m + "/model.safetensors")
        expectError(m, contains: "no model.safetensors") { _ = try ModelLoader.load(m) }
        expectError(dir + "/nope", contains: "no such file") { _ = try ModelLoader.load(dir + "/nope") }
    }

    func testNaNWeightsAreRejected() throws {
        let m = try brokenFolder { _ in }
        let st = try SafeTensorsFile(path: m + "/model.safetensors")
        let info = st.tensors["model.norm.weight"]!
        var bytes = try Data(contentsOf: URL(fileURLWithPath: m + "/model.safetensors"))
        withUnsafeBytes(of: Float.nan) { bytes.replaceSubrange(info.offset..<(info.offset + 4), with: $0) }
        try bytes.write(to: URL(fileURLWithPath: m + "/model.safetensors"))
        expectError(m, contains: "NaN") { _ = try ModelLoader.load(m) }
    }

    func testShardedCheckpointIndex() throws {
        // Split the tiny model over two shards with an index: same logits as the single file.
        let src = fixturesDir + "/tiny-models/c_qwen2_bias_untied"
        let out = dir + "/sharded"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: src + "/config.json", toPath: out + "/config.json")
        let st = try SafeTensorsFile(path: src + "/model.safetensors")
        let names = st.tensors.keys.sorted()
        var map: [String: String] = [:]
        for (k, part) in [names.filter { $0.contains("layers.0.") }, names.filter { !$0.contains("layers.0.") }].enumerated() {
            let file = "model-0000\(k + 1)-of-00002.safetensors"
            var header: [String: Any] = [:], blob = Data(), offset = 0
            for n in part {
                let t = st.tensors[n]!
                header[n] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.byteCount]]
                blob.append(Data(bytes: st.file.base + t.offset, count: t.byteCount))
                offset += t.byteCount
                map[n] = file
            }
            var d = Data()
            let h = try JSONSerialization.data(withJSONObject: header)
            withUnsafeBytes(of: UInt64(h.count).littleEndian) { d.append(contentsOf: $0) }
            d.append(h); d.append(blob)
            try d.write(to: URL(fileURLWithPath: out + "/" + file))
        }
        try JSONSerialization.data(withJSONObject: ["weight_map": map]).write(to: URL(fileURLWithPath: out + "/model.safetensors.index.json"))
        let ids = [1, 5, 9, 299, 0]
        XCTAssertEqual(try ModelLoader.load(out).model.forward(ids), try ModelLoader.load(src).model.forward(ids))
        try "{}".write(toFile: out + "/model.safetensors.index.json", atomically: true, encoding: .utf8)
        expectError(out + "/model.safetensors.index.json", contains: "weight_map") { _ = try ModelLoader.load(out) }
    }
}

final class SafeTensorsDTypeTests: XCTestCase {
    /// F16, BF16 and F64 tensors convert to the same Float32 values numpy gives.
    func testHalfAndBFloatConversion() throws {
        let path = NSTemporaryDirectory() + "coquant-dtypes-\(getpid()).safetensors"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let values: [Float] = [1, -2.5, 0.099975586, 65504, -0.0, 3.140625]
        var blob = Data()
        for v in values { withUnsafeBytes(of: Float16(v).bitPattern.littleEndian) { blob.append(contentsOf: $0) } }
        for v in values { withUnsafeBytes(of: UInt16(v.bitPattern >> 16).littleEndian) { blob.append(contentsOf: $0) } }
        for v in values { withUnsafeBytes(of: Double(v)) { blob.append(contentsOf: $0) } }
        let n = values.count
        let header = try JSONSerialization.data(withJSONObject: [
            "h": ["dtype": "F16", "shape": [2, 3], "data_offsets": [0, 2 * n]],
            "b": ["dtype": "BF16", "shape": [n], "data_offsets": [2 * n, 4 * n]],
            "d": ["dtype": "F64", "shape": [n], "data_offsets": [4 * n, 12 * n]],
            "__metadata__": ["format": "pt"]])
        var d = Data()
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { d.append(contentsOf: $0) }
        d.append(header); d.append(blob)
        try d.write(to: URL(fileURLWithPath: path))
        let st = try SafeTensorsFile(path: path)
        XCTAssertEqual(st.tensors["h"]?.shape, [2, 3])
        XCTAssertEqual(st.metadata["format"], "pt")
        XCTAssertEqual(try st.floats("h"), values.map { Float(Float16($0)) })
        XCTAssertEqual(try st.floats("b"), values.map { Float(bitPattern: $0.bitPattern & 0xFFFF_0000) })
        XCTAssertEqual(try st.floats("d"), values)
        XCTAssertThrowsError(try st.ints("h"))
    }
}
