#!/usr/bin/env python3
"""Writes the JSON Schema agreement corpus for grammar_test: for each schema,
candidate documents (instances generated from the schema, then mutated: wrong
types, missing required keys, extra keys, enum misses, arrays and strings of the
wrong length, truncations) with the verdict of the `jsonschema` package
(tests/requirements.txt). The C++ test checks that the schema's grammar accepts
exactly the documents jsonschema accepts.

The documents are written the ways a model writes JSON (compact, ", "/": "
separators, indent=2, ASCII-escaped or raw UTF-8), with keys in the schema's
order: the grammar fixes property order, so reordered keys are not a feature it
claims. Objects with properties say additionalProperties: false (the grammar
never adds undeclared keys). Seeded: the same corpus every run.

usage: make_schema_corpus.py OUT.json
"""
import copy
import json
import random
import sys

import jsonschema

R = random.Random(20261207)

ALPHABET = list("abcdefgxyz ABC0123456789-_.,:;!?") + ["é", "日", "本", "ß", "€", '"', "\\", "\n", "\t", "/"]
SAFE_ALPHABET = list("abcdefxyz0123456789-_.")

DEFS = {
    "Color": {"enum": ["red", "green", "blue"], "type": "string", "title": "Color"},
    "Point": {
        "type": "object",
        "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        "required": ["x", "y"],
        "additionalProperties": False,
    },
    "Node": {
        "type": "object",
        "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2}},
        "required": ["value"],
        "additionalProperties": False,
    },
}

SCHEMAS = [
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
    {"type": "null"},
    {"type": "string"},
    {"type": ["string", "null"]},
    {"type": "string", "minLength": 2, "maxLength": 5},
    {"type": "string", "pattern": "^[a-z]{2,4}-\\d+$"},
    {"type": "string", "pattern": "ab+c"},
    {"enum": ["red", "green", 3, None, True]},
    {"const": "fixed"},
    {"type": "array", "items": {"type": "integer"}},
    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}},
     "required": ["b"], "additionalProperties": False},
    {"type": "object", "properties": {"title": {"type": "string", "maxLength": 8},
                                      "color": {"$ref": "#/$defs/Color"},
                                      "tags": {"type": "array", "items": {"$ref": "#/$defs/Color"}, "maxItems": 3},
                                      "origin": {"$ref": "#/$defs/Point"}},
     "required": ["title", "color", "tags", "origin"], "additionalProperties": False, "$defs": DEFS},
    {"type": "object", "properties": {"note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
                                      "count": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
     "required": [], "additionalProperties": False},
    {"oneOf": [{"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}},
                "required": ["kind", "r"], "additionalProperties": False},
               {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer"}},
                "required": ["kind", "side"], "additionalProperties": False}]},
    {"$ref": "#/$defs/Node", "$defs": DEFS},
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {"type": "object", "properties": {}, "additionalProperties": False},
    {"type": "object", "properties": {"p": {"$ref": "#/$defs/Point"}, "q": {"type": "array", "items": {"$ref": "#/$defs/Point"}}},
     "required": ["p"], "additionalProperties": False, "$defs": DEFS},
    {"allOf": [{"type": "array", "items": {"type": ["integer", "string"]}, "maxItems": 4}]},
    {},
]


def resolve(schema, root):
    while isinstance(schema, dict) and "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        schema = root["$defs"][name]
    return schema


def rand_string(alphabet=ALPHABET, lo=0, hi=8):
    return "".join(R.choice(alphabet) for _ in range(R.randint(lo, hi)))


def rand_any(depth=0):
    kinds = ["int", "num", "str", "bool", "null"] + (["list", "obj"] if depth < 2 else [])
    k = R.choice(kinds)
    if k == "int":
        return R.randint(-1000, 1000)
    if k == "num":
        return round(R.uniform(-100, 100), 3) + 0.001
    if k == "str":
        return rand_string()
    if k == "bool":
        return R.random() < 0.5
    if k == "null":
        return None
    if k == "list":
        return [rand_any(depth + 1) for _ in range(R.randint(0, 3))]
    return {rand_string(SAFE_ALPHABET, 1, 4): rand_any(depth + 1) for _ in range(R.randint(0, 3))}


def generate(schema, root, depth=0):
    """An instance that should validate (jsonschema decides)."""
    schema = resolve(schema, root)
    if schema is True or schema == {} or (isinstance(schema, dict) and set(schema) <= {"$defs"}):
        return rand_any(depth)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return R.choice(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return generate(R.choice(schema[key]), root, depth)
    t = schema.get("type")
    if isinstance(t, list):
        t = R.choice(t)
    if t == "integer":
        return R.randint(-10**6, 10**6)
    if t == "number":
        return R.choice([R.randint(-50, 50), round(R.uniform(-1000, 1000), 4) + 0.0001, 1.5e-5, -2.25e10])
    if t == "boolean":
        return R.random() < 0.5
    if t == "null":
        return None
    if t == "string":
        if "pattern" in schema:
            if schema["pattern"].startswith("^"):
                return R.choice(["ab", "xyz"]) + "-" + str(R.randint(0, 999))
            return rand_string(SAFE_ALPHABET, 0, 3) + "a" + "b" * R.randint(1, 3) + "c" + rand_string(SAFE_ALPHABET, 0, 3)
        return rand_string(ALPHABET, schema.get("minLength", 0), schema.get("maxLength", 8))
    if t == "array":
        lo, hi = schema.get("minItems", 0), schema.get("maxItems", 4 if depth < 3 else 0)
        return [generate(schema.get("items", {}), root, depth + 1) for _ in range(R.randint(lo, max(lo, hi)))]
    if t == "object":
        props = schema.get("properties", {})
        if not props:
            extra = schema.get("additionalProperties", True)
            if extra is False:
                return {}
            return {rand_string(SAFE_ALPHABET, 1, 5): generate(extra if isinstance(extra, dict) else {}, root, depth + 1)
                    for _ in range(R.randint(0, 3))}
        required = set(schema.get("required", []))
        return {k: generate(v, root, depth + 1) for k, v in props.items() if k in required or R.random() < 0.6}
    return rand_any(depth)


def mutate(value, schema, root):
    """A nearby document that often breaks the schema."""
    schema = resolve(schema, root)
    choice = R.random()
    if isinstance(value, dict) and value and choice < 0.5:
        out = dict(value)
        key = R.choice(list(out))
        action = R.choice(["drop", "retype", "deep"])
        if action == "drop":
            del out[key]
        elif action == "retype":
            out[key] = rand_any(2)
        else:
            sub = schema.get("properties", {}).get(key, {}) if isinstance(schema, dict) else {}
            out[key] = mutate(out[key], sub, root)
        return out
    if isinstance(value, dict) and choice < 0.65:
        out = dict(value)
        out["zz_extra"] = rand_any(2)  # last: keys stay in schema order
        return out
    if isinstance(value, list) and value and choice < 0.6:
        out = list(value)
        action = R.choice(["drop", "dup", "retype", "deep"])
        i = R.randrange(len(out))
        if action == "drop":
            del out[i]
        elif action == "dup":
            out.append(copy.deepcopy(out[i]))
        elif action == "retype":
            out[i] = rand_any(2)
        else:
            out[i] = mutate(out[i], schema.get("items", {}) if isinstance(schema, dict) else {}, root)
        return out
    if isinstance(value, str) and choice < 0.6:
        return R.choice([value + rand_string(ALPHABET, 1, 3), value[:-1], rand_string(ALPHABET, 0, 6), value.upper()])
    if isinstance(value, bool) or value is None:
        return R.choice([0, "true", None if value is not None else False, 1.5])
    if isinstance(value, int) and choice < 0.6:
        return R.choice([value + 0.5, str(value), -value, None])
    return rand_any(1)


def serialize(value):
    style = R.randrange(4)
    if style == 0:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if style == 1:
        return json.dumps(value, ensure_ascii=False)
    if style == 2:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def main():
    corpus = []
    for schema in SCHEMAS:
        validator = jsonschema.Draft202012Validator(schema)
        cases, seen = [], set()
        for _ in range(60):
            value = generate(schema, schema)
            if R.random() < 0.5:
                value = mutate(value, schema, schema)
            text = serialize(value)
            if R.random() < 0.08 and len(text) > 1:
                text = text[: R.randrange(1, len(text))]  # truncated: not JSON at all
            if text in seen:
                continue
            seen.add(text)
            try:
                valid = validator.is_valid(json.loads(text))
            except json.JSONDecodeError:
                valid = False
            cases.append({"text": text, "valid": valid})
        corpus.append({"schema": schema, "cases": cases})
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(corpus, f, ensure_ascii=False, indent=1)
    total = sum(len(c["cases"]) for c in corpus)
    valid = sum(case["valid"] for c in corpus for case in c["cases"])
    print(f"{len(corpus)} schemas, {total} documents, {valid} valid")


if __name__ == "__main__":
    main()
