# Model: the MedicalNet ResNet family, heads, flat parameters, safetensors import/export, PyTorch parity.
mn_test(test_model_layout SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_layout.c TIMEOUT 60 LABELS model)
mn_test(test_model_shapes SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_model_shapes.c TIMEOUT 120 LABELS model)
