# The `tokenizer_fixtures` setup test: builds the tokenizer tests' inputs that are
# derived from real data we may not commit (tests/tokenizer/make_fixtures.py).
set(NIBBLE_TOKENIZER_FIXTURES "${PROJECT_BINARY_DIR}/tokenizer_fixtures")
add_test(NAME tokenizer_fixtures
         COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/tests/tokenizer/make_fixtures.py
                 --shared ${NIBBLE_SHARED_DIR} --out ${NIBBLE_TOKENIZER_FIXTURES})
set_tests_properties(tokenizer_fixtures PROPERTIES FIXTURES_SETUP tokenizer_fixtures LABELS unit)
