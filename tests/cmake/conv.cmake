# 3-D convolution and transposed convolution: fast (vol2col + BLIS) vs loop nests, finite differences,
# accumulation, adjointness, shape errors.
mn_test(test_conv3d SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_conv3d.c TIMEOUT 120 LABELS nn)
