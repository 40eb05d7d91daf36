# Empty dependencies file for mednet.
# This may be replaced when dependencies are built.
