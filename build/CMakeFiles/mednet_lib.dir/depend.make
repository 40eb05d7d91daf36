# Empty dependencies file for mednet_lib.
# This may be replaced when dependencies are built.
