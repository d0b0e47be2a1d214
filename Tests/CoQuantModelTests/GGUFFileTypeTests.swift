@testable import CoQuantModel
import Foundation
import XCTest

/// `GGUFFileType` gives every tensor the block type llama.cpp's own llama-quantize gives it, for each of the 14 file
/// types: the fixture holds the types llama-quantize wrote for two random models (one 256 wide with n_gqa 4 and 28
/// layers, so every layer rule shows; one 288 wide with n_gqa 2, so every fallback shows).
final class GGUFFileTypeTests: XCTestCase {
    func testTensorTypesAreLlamaQuantizes() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/llama-quantize/tensor-types.json")
        let fixture = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let linears = ["attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                       "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                       "ffn_down": "mlp.down_proj"]
        var checked = 0
        for (model, hidden, tied) in [("deep", 256, false), ("narrow", 288, true)] {
            let m = try XCTUnwrap(fixture[model] as? [String: Any])
            let layers = try XCTUnwrap(m["layers"] as? Int), gqa = try XCTUnwrap(m["gqa"] as? Int)
            let types = try XCTUnwrap(m["types"] as? [String: [String: String]])
            XCTAssertEqual(Set(types.keys), Set(GGUFFileType.allCases.map(\.rawValue)))
            for (name, tensors) in types {
                let f = try XCTUnwrap(GGUFFileType(name: name))
                for (tensor, expected) in tensors {
                    let parts = tensor.split(separator: ".")
                    let ours: GGMLType
                    if tensor == "output.weight" || (tensor == "token_embd.weight" && tied) {
                        ours = f.tableType(isHead: true, columns: hidden)
                    } else if tensor == "token_embd.weight" {
                        ours = f.tableType(isHead: false, columns: hidden)
                    } else {
                        let linear = try XCTUnwrap(linears[String(parts[2])], tensor)
                        ours = f.linearType(linear, layer: Int(parts[1])!, layers: layers,
                                            columns: linear == "mlp.down_proj" ? 512 : hidden, gqa: gqa)
                    }
                    XCTAssertEqual(ours.name, expected, "\(model) \(name) \(tensor)")
                    checked += 1
                }
            }
        }
        XCTAssertEqual(checked, 14 * (28 * 7 + 2) + 14 * (8 * 7 + 1))
    }

    func testNames() {
        XCTAssertEqual(GGUFFileType(name: "q4_k_m"), .q4_K_M)
        XCTAssertEqual(GGUFFileType(name: "Q4_K"), .q4_K_M)      // llama-quantize's alias
        XCTAssertEqual(GGUFFileType(name: "Q3_K"), .q3_K_M)
        XCTAssertNil(GGUFFileType(name: "Q4_K_X"))
        XCTAssertNil(GGUFFileType(name: "W4A16"))
        XCTAssertEqual(GGUFFileType.q4_K_M.id, 15)
    }
}
