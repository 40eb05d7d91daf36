/* fuzz_nifti: the NIfTI reader (src/data/nifti.c on libnifti and zlib), header and voxels.
 *
 * The input is the file: written as <tmp>.nii.gz when it starts with the gzip magic (1f 8b), else as <tmp>.nii,
 * since libnifti chooses its reader by the name and mednet reads the voxels through zlib either way.  Both entry
 * points run: the header-only read that prep uses for the median spacing, and the full read.  A success must give
 * a volume within the size limits with as many voxels as its shape says. */
#include "fuzz_util.h"
#include "mednet/limits.h"
#include "mednet/nifti.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int gz = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
    char path[512];
    fz_path(path, sizeof path, "nifti", gz ? ".nii.gz" : ".nii");
    fz_write_file(path, data, size);
    mn_volume vol;
    mn_nifti_info info;
    if (mn_nifti_read_header(path, &vol, &info) == MN_OK && vol.data) abort();
    if (mn_nifti_read(path, &vol, &info) == MN_OK) {
        int64_t n = mn_volume_voxels(&vol);
        if (!vol.data || n < 1 || n > MN_MAX_VOLUME_VOXELS) abort();
        /* Touch every voxel: a buffer shorter than the shape says is a sanitizer report here. */
        volatile float sum = 0;
        for (int64_t i = 0; i < n; i++) sum += vol.data[i];
        (void)sum;
        mn_volume_free(&vol);
    }
    unlink(path);
    return 0;
}
