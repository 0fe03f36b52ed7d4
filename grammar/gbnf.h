#pragma once
// llama.cpp's GBNF grammar format (the `guided_grammar` request field):
//   root  ::= "yes" | "no" | item+
//   item  ::= [a-z]+ ("," ws)?     # comments run to the end of the line
// Rules are `name ::= alternatives`; terms are "literals" (\n \t \" \\ \xHH
// \uHHHH escapes), [classes] ([^...] negated), rule names, ( groups ), and
// `.` (any character), each optionally followed by * + ? {m} {m,} {m,n}.
// Generation starts at `root`.
#include <string_view>

#include "grammar/grammar.h"

namespace nibble::grammar {

// Throws nibble::Error saying what is wrong and where.
Grammar parse_gbnf(std::string_view text);

}  // namespace nibble::grammar
