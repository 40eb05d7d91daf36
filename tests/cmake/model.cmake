# Model: the MedicalNet ResNet family, heads, flat parameters, safetensors import/export, PyTorch parity.
mn_test(test_model_layout SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_layout.c TIMEOUT 60 LABELS model)
mn_test(test_model_shapes SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_shapes.c TIMEOUT 120 LABELS model)
mn_test(test_model_grad SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_grad.c TIMEOUT 120 LABELS model)
# PyTorch parity, one ctest entry per depth (each well under a minute on 2 cores).
mn_test(test_model_parity SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_parity.c ARGS 10 TIMEOUT 300 LABELS "model;ref")
target_compile_definitions(test_model_parity PRIVATE MN_PYTHON="${MN_PYTHON}" MN_REF_DIR="${CMAKE_CURRENT_SOURCE_DIR}/ref")
add_test(NAME test_model_parity_18 COMMAND test_model_parity 18)
add_test(NAME test_model_parity_50 COMMAND test_model_parity 50)
set_tests_properties(test_model_parity_18 test_model_parity_50 PROPERTIES TIMEOUT 300 LABELS "model;ref"
                     ENVIRONMENT "OMP_NUM_THREADS=1")
mn_test(test_safetensors SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_safetensors.c TIMEOUT 300 LABELS model)
# The MedicalNet checkpoint converter: a fake resnet_10.pth (DataParallel 'module.' prefix) converted to safetensors,
# then imported by `mednet model --strict`.
set(MN_CVT_DIR ${CMAKE_CURRENT_BINARY_DIR}/convert_selftest)
add_test(NAME test_convert_medicalnet
         COMMAND sh -c "rm -rf '${MN_CVT_DIR}' && mkdir -p '${MN_CVT_DIR}' && '${MN_PYTHON}' '${CMAKE_CURRENT_SOURCE_DIR}/ref/convert_medicalnet.py' --selftest '${MN_CVT_DIR}' && '$<TARGET_FILE:mednet>' model --depth 10 --classes 2 --import '${MN_CVT_DIR}/resnet_10.safetensors' --strict")
set_tests_properties(test_convert_medicalnet PROPERTIES TIMEOUT 120 LABELS "model;ref"
                     PASS_REGULAR_EXPRESSION "72 tensors loaded, 0 missing, 0 unexpected, 0 mis-shaped")
# `mednet model`: the parameter table of the seven depths, and an export -> strict import round trip by the CLI.
add_test(NAME cli_model_table COMMAND mednet model)
set_tests_properties(cli_model_table PROPERTIES TIMEOUT 120 LABELS model
                     PASS_REGULAR_EXPRESSION "resnet10 .*14355520.*resnet18 .*32986176.*resnet34 .*63295808.*resnet50 .*46155072.*resnet101 .*85201216.*resnet152 .*117359936.*resnet200 .*126559552")
set(MN_CLI_ST ${CMAKE_CURRENT_BINARY_DIR}/cli_model_r50.safetensors)
add_test(NAME cli_model_export_import
         COMMAND sh -c "'$<TARGET_FILE:mednet>' model --depth 50 --heads 2:4,7:3 --input 1x24x24x24 --export '${MN_CLI_ST}' && '$<TARGET_FILE:mednet>' model --depth 50 --heads 2:4,7:3 --import '${MN_CLI_ST}' --strict && rm -f '${MN_CLI_ST}'")
set_tests_properties(cli_model_export_import PROPERTIES TIMEOUT 120 LABELS model
                     PASS_REGULAR_EXPRESSION "memory plan for input 1x1x24x24x24.*imported .*loaded, 0 missing, 0 unexpected, 0 mis-shaped")
mn_test(test_model_heads SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_heads.c TIMEOUT 60 LABELS model)
