//! Colour conversion shared by the encoders: the framebuffer's `0x00RRGGBB`
//! words to an I420 (YUV 4:2:0 planar) libavcodec frame, BT.601 limited
//! range, which is what a browser assumes for VP8 and for H.264 without a
//! colour description.
//!
//! Invariants: luma is written into the frame itself; the chroma buffers are
//! laid out with the frame's own strides, so each goes over in one copy; a [`Planes`] serves exactly one size (the encoders
//! make a new one with each new stream). Costs, measured on the 2-core
//! development machine (idle): 0.16 ms at 1280×720 and 0.37 ms at 1920×1080
//! for the conversion; the bench prints it each run. That is under 5 % of a frame's budget, so converting only the
//! damaged rows is not worth the damage bookkeeping it would need.

use ffmpeg_next::format::Pixel;
use ffmpeg_next::frame;
use yuv::{
    BufferStoreMut, YuvConversionMode, YuvPlanarImageMut, YuvRange, YuvStandardMatrix,
    bgra_to_yuv420,
};

use crate::video::EncodeError;

// The framebuffer's `0x00RRGGBB` words are read as B,G,R,X bytes, which holds
// on little-endian hosts only.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "the BGRA view of the framebuffer assumes a little-endian host"
);

/// An I420 frame of one size and the buffers the conversion writes.
pub(crate) struct Planes {
    /// The frame handed to the encoder, reused for every picture.
    pub(crate) frame: frame::Video,
    /// The chroma planes, with the frame's strides.
    buffers: [Vec<u8>; 2],
    width: u16,
    height: u16,
}

impl Planes {
    /// Planes for `width`×`height` pictures.
    pub(crate) fn new(width: u16, height: u16) -> Self {
        let frame = frame::Video::new(Pixel::YUV420P, u32::from(width), u32::from(height));
        let buffers = [1, 2].map(|i| vec![0u8; frame.stride(i) * frame.plane_height(i) as usize]);
        Self {
            frame,
            buffers,
            width,
            height,
        }
    }

    /// Converts `pixels` (exactly `width` × `height` words) into the frame:
    /// luma straight into the frame's plane, chroma through the buffers
    /// (the conversion writes all three planes in one call, and the frame
    /// lends one plane at a time).
    pub(crate) fn load(&mut self, pixels: &[u32]) -> Result<(), EncodeError> {
        let strides = [0, 1, 2].map(|i| self.frame.stride(i));
        let [u, v] = &mut self.buffers;
        let mut image = YuvPlanarImageMut {
            y_plane: BufferStoreMut::Borrowed(self.frame.data_mut(0)),
            y_stride: stride_u32(strides[0])?,
            u_plane: BufferStoreMut::Borrowed(u),
            u_stride: stride_u32(strides[1])?,
            v_plane: BufferStoreMut::Borrowed(v),
            v_stride: stride_u32(strides[2])?,
            width: u32::from(self.width),
            height: u32::from(self.height),
        };
        // Odd sizes need nothing special: `yuv` gives the last column / row
        // a chroma sample of its own.
        bgra_to_yuv420(
            &mut image,
            bytemuck::cast_slice(pixels),
            u32::from(self.width) * 4,
            YuvRange::Limited,
            YuvStandardMatrix::Bt601,
            YuvConversionMode::Balanced,
        )
        .map_err(|e| EncodeError::Encode(format!("colour conversion: {e}")))?;
        for (i, plane) in self.buffers.iter().enumerate() {
            self.frame.data_mut(i + 1).copy_from_slice(plane);
        }
        Ok(())
    }
}

fn stride_u32(stride: usize) -> Result<u32, EncodeError> {
    u32::try_from(stride).map_err(|_| EncodeError::Encode(format!("plane stride {stride}")))
}

/// Checks that `pixels` holds a `width`×`height` picture.
pub(crate) fn check_size(pixels: &[u32], width: u16, height: u16) -> Result<(), EncodeError> {
    if width == 0 || height == 0 {
        return Err(EncodeError::Encode(format!("empty frame {width}x{height}")));
    }
    let expected = usize::from(width) * usize::from(height);
    if pixels.len() != expected {
        return Err(EncodeError::Encode(format!(
            "{} pixels for a {width}x{height} frame (expected {expected})",
            pixels.len()
        )));
    }
    Ok(())
}
