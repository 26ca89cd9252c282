"""DICOM, from bytes (pydicom 3). Import from the module that does the work:

    parse     bytes -> pydicom dataset; the one place pydicom's exceptions become ours
    fastscan  the header scan's fast path (explicit VR little endian, no pydicom parse)
    header    DicomHeader, ObjectKind: what a header says, and the rules that set an object aside
    grouping  VolumeMembers: which objects form a volume (duplicates, localizers, the volume budget)
    pixels    stored pixel values, by the cheapest exact path
    geometry  orientation and slice positions -> the volume's affine
    series    a volume's objects -> Volume in HU (and the source frames a SEG references)
    seg       DICOM SEG objects of a volume's labels (highdicom)
"""
